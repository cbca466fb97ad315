"""mmengine checkpoints load with ``torch.load(weights_only=True)`` once mmslab is imported,
through a narrow allow-list (mmslab.serialization), and nothing else gets through."""
import copyreg
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner

import mmslab  # noqa: F401  (registers the reducer and the allow-list)
from mmslab import serialization

from _toy import toy_runner_cfg

NAMED_GLOBALS = torch.__version__ >= (2, 6)


@pytest.fixture(scope='module')
def mmengine_checkpoint(tmp_path_factory) -> Path:
    """A real training checkpoint of an mmengine Runner (message hub, optimizer,
    schedulers, PRepBN lam buffers)."""
    work = tmp_path_factory.mktemp('runner')
    cfg = toy_runner_cfg(work, max_iters=4, hook=dict(type='PRepBNHook', decay_iters=0.5))
    cfg['default_hooks']['checkpoint']['interval'] = 4
    Runner(**cfg).train()
    return work / 'iter_4.pth'


def test_mmengine_checkpoint_loads_weights_only(mmengine_checkpoint: Path) -> None:
    ckpt = torch.load(mmengine_checkpoint, map_location='cpu', weights_only=True)
    trusted = serialization.load_trusted(str(mmengine_checkpoint))
    assert set(ckpt) == set(trusted) >= {'meta', 'state_dict', 'optimizer', 'message_hub'}
    for k, v in trusted['state_dict'].items():
        assert torch.equal(ckpt['state_dict'][k], v), k
    scalars = ckpt['message_hub']['log_scalars']
    assert 'train/prepbn_lam' in scalars and 'train/loss' in scalars
    for key, buf in trusted['message_hub']['log_scalars'].items():
        got = scalars[key]
        assert isinstance(got, HistoryBuffer) and got.max_length == buf.max_length
        np.testing.assert_array_equal(got.data[0], buf.data[0])
        np.testing.assert_array_equal(got.data[1], buf.data[1])
        assert got.mean() == buf.mean() and got.current() == buf.current()


def test_no_unsafe_global_in_a_new_checkpoint(mmengine_checkpoint: Path) -> None:
    """Every global a checkpoint written with mmslab imported names is allowed: torch's
    own or on mmslab's allow-list (torch >= 2.6 lists the others)."""
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):  # torch >= 2.6
        assert torch.serialization.get_unsafe_globals_in_checkpoint(mmengine_checkpoint) == []


def test_allow_list_is_narrow() -> None:
    """mmslab allow-lists HistoryBuffer and numpy's numeric scalars / arrays, nothing that
    runs code; its one named entry resolves ``builtins.getattr`` to the restricted getattr."""
    for g in serialization.SAFE_GLOBALS:
        assert g.__module__.split('.')[0] in ('mmengine', 'numpy'), g
    object_dtype = type(np.dtype('O'))
    entries = torch.serialization.get_safe_globals()
    for entry in entries:
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        assert obj not in (getattr, eval, exec, os.system, object_dtype), entry
        if name == 'builtins.getattr':
            assert obj is serialization.history_buffer_method
    assert all(g in entries for g in serialization.SAFE_GLOBALS)
    assert ((serialization.history_buffer_method, 'builtins.getattr') in entries) == NAMED_GLOBALS


def _old_format_bytes(obj) -> bytes:
    """``obj`` pickled as plain mmengine does, without mmslab's reducer."""
    saved = copyreg.dispatch_table.pop(HistoryBuffer)
    try:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    finally:
        copyreg.dispatch_table[HistoryBuffer] = saved


def test_checkpoint_written_without_mmslab() -> None:
    """A history buffer pickled by plain mmengine carries getattr(HistoryBuffer, 'min')...:
    on torch >= 2.6 it loads through the restricted getattr; torch 2.5 cannot register a
    global under another name, so there it needs a trusted load (as before mmslab)."""
    buf = HistoryBuffer()
    for v in (1.0, 2.0, 4.0):
        buf.update(v)
    data = _old_format_bytes({'message_hub': {'log_scalars': {'train/loss': buf}}})
    assert b'getattr' in data
    if NAMED_GLOBALS:
        out = torch.load(io.BytesIO(data), weights_only=True)
        got = out['message_hub']['log_scalars']['train/loss']
        assert got.mean() == buf.mean() and got.max() == 4.0
    else:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(data), weights_only=True)


class _GetAttr:
    """Pickles as ``getattr(obj, name)``."""

    def __init__(self, obj, name: str) -> None:
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


@pytest.mark.parametrize('payload', [_GetAttr(Path, 'unlink'), _GetAttr(HistoryBuffer, '__init__'),
                                     eval, os.system,
                                     np.array([{'a': 1}], dtype=object)])
def test_other_globals_are_refused(payload) -> None:
    buf = io.BytesIO()
    torch.save({'x': payload}, buf)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)



def test_trusted_conversion_of_a_file_the_loader_refuses(tmp_path: Path, release_weights,
                                                          monkeypatch) -> None:
    """A training checkpoint with an ``argparse.Namespace`` beside its weights: the
    weights_only loader (torch >= 2.6's default; forced here so that torch 2.5 runs it too)
    refuses it with an error that says how to convert it, and ``--trust`` converts it into
    a file that loads with ``weights_only=True``."""
    import argparse

    from convert_checkpoint import main as convert_main
    from mmslab.models import SLABPVT
    from mmslab.checkpoint_io import read_checkpoint

    src = tmp_path / 'train_ckpt.pth'
    torch.save({'model': release_weights('slab_pvt_tiny'), 'args': argparse.Namespace(lr=1e-3)},
               src)
    with monkeypatch.context() as m:
        m.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
        with pytest.raises(ValueError, match=r"weights_only loader.*Namespace.*--trust"):
            read_checkpoint(str(src))
    dst = tmp_path / 'converted.pth'
    convert_main([str(src), str(dst), '--family', 'pvt', '--trust'])
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    out = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    model = SLABPVT(init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()  # the converted file through init_cfg, weights_only forced
    key = 'stages.0.blocks.0.attn.q.weight'
    torch.testing.assert_close(model.state_dict()[key], out['state_dict'][key])


def test_release_file_through_init_cfg_weights_only(release_checkpoint, monkeypatch) -> None:
    """A released ImageNet file ({'model': ..., 'epoch': ...}) loads through init_cfg with
    weights_only forced (torch >= 2.6's default)."""
    from mmslab.models import SLABSwin
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    model = SLABSwin(arch='tiny', init_cfg=dict(type='Pretrained',
                                                checkpoint=release_checkpoint('slab_swin_tiny')))
    model.init_weights()
