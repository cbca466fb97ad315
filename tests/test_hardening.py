"""Hardening (issue 11): every bad input gives one clear error (type + words asserted),
folded and trained checkpoints never mix under any loading route, tools never write onto
their inputs and write atomically (a tool killed mid-write leaves the old file or none).
"""
import argparse
import copy
import functools
import glob
import importlib.util
import os
import os.path as osp
import random
import signal
import stat
import subprocess
import sys
import time
import zipfile

import pytest
import torch
import torch.nn as nn
from mmengine.runner import load_checkpoint

from mmslab.fileio import atomic_save, atomic_write, atomic_write_text, check_outputs, same_file
from mmslab.models import SLABPVT, PRepBN, RepBN, SLABSwin
from mmslab.models import SimplifiedLinearAttention as SLA
from mmslab.models.checkpoint import convert_checkpoint_file, read_checkpoint
from mmslab.models.reparameterize import deploy_checkpoint
from mmslab.validation import (argparse_float, argparse_int, check_bool, check_choice,
                               check_float, check_float_seq, check_int, check_int_seq,
                               check_size_2d, check_str_letters)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PVT_MINI = dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1])
SWIN_MINI = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
MINIS = {'pvt': (SLABPVT, PVT_MINI), 'swin': (SLABSwin, SWIN_MINI)}


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f'mmslab_tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ============================================================================ validation
class TestValidationHelpers:
    """mmslab.validation: TypeError for a wrong type, ValueError for a wrong value, and a
    message with the owner, the argument, the value and what is accepted."""

    def test_int(self):
        assert check_int('SLABPVT', 'frozen_stages', 2, min=-1, max=4) == 2
        with pytest.raises(ValueError, match=r'^SLABPVT: frozen_stages must be in \[-1, 4\], '
                           r'got 7$'):
            check_int('SLABPVT', 'frozen_stages', 7, min=-1, max=4)
        with pytest.raises(TypeError, match=r'frozen_stages must be an int in \[-1, 4\], got '
                           r'1\.0 \(float\)'):
            check_int('SLABPVT', 'frozen_stages', 1.0, min=-1, max=4)
        with pytest.raises(TypeError, match=r'X: n must be an int >= 1, got True \(bool\)'):
            check_int('X', 'n', True, min=1)

    def test_float(self):
        assert check_float('A', 'rate', 0, min=0, max=1) == 0.0  # an int is a number
        assert isinstance(check_float('A', 'rate', 0, min=0, max=1), float)
        with pytest.raises(ValueError, match=r'A: drop_path_rate must be in \[0, 1\], got -0\.3'):
            check_float('A', 'drop_path_rate', -0.3, min=0, max=1)
        with pytest.raises(ValueError, match=r'A: eps must be > 0, got 0'):
            check_float('A', 'eps', 0, min=0, min_open=True)
        with pytest.raises(ValueError, match=r'A: eps must be > 0, got nan'):
            check_float('A', 'eps', float('nan'), min=0, min_open=True)
        with pytest.raises(ValueError, match=r'A: x must be a finite number, got inf'):
            check_float('A', 'x', float('inf'))
        with pytest.raises(TypeError, match=r"A: x must be a number in \[0, 1\], got '0\.5' "
                           r'\(str\)'):
            check_float('A', 'x', '0.5', min=0, max=1)
        with pytest.raises(TypeError, match=r'got False \(bool\)'):
            check_float('A', 'x', False)

    def test_sequences(self):
        assert check_int_seq('S', 'depths', [2, 2], length=2, min=1) == (2, 2)
        assert check_int_seq('S', 'window_sizes', 7, length=4, min=1, scalar=True) == (7,) * 4
        with pytest.raises(ValueError, match=r'S: num_heads must be a sequence of 4 ints >= 1, '
                           r'got \(1, 0, 4, 8\): entry 1 is 0'):
            check_int_seq('S', 'num_heads', (1, 0, 4, 8), length=4, min=1)
        with pytest.raises(ValueError, match=r'S: num_heads=\[1, 2\] has 2 entries, expected 4 '
                           r'\(one per stage\)'):
            check_int_seq('S', 'num_heads', [1, 2], length=4, min=1, length_hint='one per stage')
        with pytest.raises(TypeError, match=r'S: out_indices must be a sequence of ints, got '
                           r'\(0, 1\.0\): entry 1 is 1\.0 \(float\)'):
            check_int_seq('S', 'out_indices', (0, 1.0))
        with pytest.raises(TypeError, match=r"got 'abc' \(str\)"):
            check_int_seq('S', 'depths', 'abc')
        with pytest.raises(ValueError, match=r'at least 1 entry, got \(\)'):
            check_int_seq('S', 'out_indices', (), min_length=1)
        assert check_float_seq('S', 'mlp_ratios', [4, 2.5], min=0, min_open=True) == (4.0, 2.5)
        with pytest.raises(ValueError, match=r'S: mlp_ratios must be a sequence of numbers > 0, '
                           r'got \[4, 0\]: entry 1 is 0'):
            check_float_seq('S', 'mlp_ratios', [4, 0], min=0, min_open=True)

    def test_size_choice_letters_bool(self):
        assert check_size_2d('P', 'pretrain_img_size', 224, min=32) == (224, 224)
        assert check_size_2d('P', 'pretrain_img_size', [224, 320], min=32) == (224, 320)
        with pytest.raises(ValueError, match=r'P: pretrain_img_size must be an int >= 32 or a '
                           r'\(height, width\) pair of ints >= 32, got 16$'):
            check_size_2d('P', 'pretrain_img_size', 16, min=32)
        with pytest.raises(TypeError, match=r"pretrain_img_size must be .*, got '224' \(str\)"):
            check_size_2d('P', 'pretrain_img_size', '224', min=32)
        assert check_choice('t', 'family', 'pvt', ['pvt', 'swin']) == 'pvt'
        with pytest.raises(ValueError, match=r"t: family must be one of \['pvt', 'swin'\], "
                           r"got 'vit'"):
            check_choice('t', 'family', 'vit', ['pvt', 'swin'])
        with pytest.raises(TypeError, match=r'got 3 \(int\)'):
            check_choice('t', 'family', 3, ['pvt', 'swin'])
        # unusual but valid: a list of letters, lower case
        assert check_str_letters('S', 'attn_types', ['l', 'L', 's', 'S'], 'LS', 4) == 'LLSS'
        with pytest.raises(ValueError, match=r"S: attn_types must be a string of 4 letters, each "
                           r"'L' or 'S', got 'LLXS' \('X' not accepted\)"):
            check_str_letters('S', 'attn_types', 'LLXS', 'LS', 4)
        with pytest.raises(TypeError, match=r'got None \(NoneType\)'):
            check_str_letters('S', 'attn_types', None, 'LS', 4)
        assert check_bool('B', 'deploy', True) is True
        with pytest.raises(TypeError, match=r'B: deploy must be True or False, got 1 \(int\)'):
            check_bool('B', 'deploy', 1)

    def test_argparse_types(self):
        parser = argparse.ArgumentParser(prog='tool', exit_on_error=False)
        parser.add_argument('--iters', type=argparse_int(min=1))
        parser.add_argument('--rtol', type=argparse_float(min=0, min_open=True))
        args = parser.parse_args(['--iters', '3', '--rtol', '1e-3'])
        assert (args.iters, args.rtol) == (3, 1e-3)
        for argv, words in ((['--iters', '0'], 'argument --iters: must be >= 1, got 0'),
                            (['--iters', '1.5'], "argument --iters: must be an int >= 1, got "
                                                 "'1.5'"),
                            (['--rtol', '-1'], 'argument --rtol: must be a finite number > 0, '
                                               'got -1'),
                            (['--rtol', 'nan'], 'argument --rtol: must be a finite number > 0'),
                            (['--rtol', 'x'], "argument --rtol: must be a number > 0, got 'x'")):
            with pytest.raises(argparse.ArgumentError) as exc:
                parser.parse_args(argv)
            assert words in str(exc.value)


# ============================================================================ checkpoint files
def _good_file(path) -> str:
    torch.save({'state_dict': SLABPVT(**PVT_MINI).state_dict()}, path)
    return str(path)


def _broken_files(tmp_path) -> dict:
    """Real broken files: ``{case: (path, error type, regex)}``."""
    good = _good_file(tmp_path / 'good.pth')
    data = open(good, 'rb').read()
    files = {}

    def put(name, content):
        path = str(tmp_path / name)
        with open(path, 'wb') as f:
            f.write(content)
        return path

    files['empty'] = (put('empty.pth', b''), ValueError, r'the file is empty \(0 bytes\)')
    files['truncated'] = (put('truncated.pth', data[:len(data) // 2]), ValueError,
                          r'truncated or corrupted PyTorch \(zip\) checkpoint of \d+ bytes')
    # a flipped block inside a tensor record: torch alone would load it silently
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    corrupted = bytearray(data)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 64
    corrupted[start:start + 64] = bytes(255 - b for b in corrupted[start:start + 64])
    files['corrupted'] = (put('corrupted.pth', bytes(corrupted)), ValueError,
                          r'corrupted PyTorch \(zip\) checkpoint: the record .* fails its CRC '
                          r'check')
    files['text'] = (put('notes.pth', b'{"weights": "elsewhere"}\n'), ValueError,
                     r'not a PyTorch checkpoint \(25 bytes, it starts with the text '
                     r'b\'{"weights"')
    legacy = str(tmp_path / 'legacy.pth')
    torch.save({'model': {'a': torch.zeros(100)}}, legacy, _use_new_zipfile_serialization=False)
    files['legacy truncated'] = (put('legacy_trunc.pth', open(legacy, 'rb').read()[:300]),
                                 ValueError, r'truncated or corrupted pickle / legacy PyTorch '
                                 r'checkpoint')
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    files['a list'] = (str(tmp_path / 'list.pth'), ValueError,
                       r'holds no state dict: it is a list of 3 items')
    torch.save({'optimizer': {}, 'meta': {'epoch': 3}}, tmp_path / 'nostate.pth')
    files['no weights'] = (str(tmp_path / 'nostate.pth'), ValueError,
                           r"holds no state dict: it is a dict of 2 entries \('optimizer', "
                           r"'meta'\) with 0 tensors")
    files['missing'] = (str(tmp_path / 'nowhere.pth'), FileNotFoundError,
                        r'checkpoint file .* does not exist')
    os.makedirs(tmp_path / 'a_folder.pth')
    files['a directory'] = (str(tmp_path / 'a_folder.pth'), IsADirectoryError,
                            r'is a directory, not a file')
    return files


def test_broken_checkpoint_files_are_diagnosed_with_their_name(tmp_path):
    """init_cfg route: the error names the file and says what was found."""
    for case, (path, error, words) in _broken_files(tmp_path).items():
        model = SLABPVT(**PVT_MINI, init_cfg=dict(type='Pretrained', checkpoint=path))
        with pytest.raises(error, match=words) as exc:
            model.init_weights()
        assert path in str(exc.value), case


def test_broken_checkpoint_files_in_the_tools(tmp_path):
    """The tools read through the same diagnosis (convert_checkpoint, deploy)."""
    files = _broken_files(tmp_path)
    for case, (path, error, words) in files.items():
        with pytest.raises(error, match=words) as exc:
            convert_checkpoint_file(path, str(tmp_path / 'out.pth'), 'swin')
        assert path in str(exc.value), case
    config = tmp_path / 'model.py'
    config.write_text('model = dict()\n')
    path, error, words = files['truncated']
    with pytest.raises(error, match=words):  # before the model is even built
        deploy_checkpoint(str(config), path, str(tmp_path / 'folded.pth'))
    assert not osp.exists(tmp_path / 'folded.pth')


def test_crc_check_passes_good_files_and_urls_are_not_touched(tmp_path):
    good = _good_file(tmp_path / 'good.pth')
    assert 'state_dict' in read_checkpoint(good)
    with pytest.raises(TypeError, match=r'a checkpoint must be a path or URL \(str\), got 3'):
        read_checkpoint(3)


@pytest.mark.parametrize('init_cfg,error,words', [
    (dict(type='Pretrained', checkpoint=None), ValueError,
     r"SLABPVT: init_cfg=.* has type 'Pretrained' but no checkpoint: 'checkpoint' must be the "
     r'path or URL of a checkpoint file\. To train from scratch, set init_cfg=None'),
    (dict(type='Pretrained'), ValueError, r"has type 'Pretrained' but no checkpoint"),
    (dict(type='Pretrained', checkpoint=7), TypeError,
     r"SLABPVT: init_cfg 'checkpoint' must be a path or URL \(a non-empty str\), got 7 \(int\)"),
    (dict(type='Pretrained', checkpoint=''), TypeError, r"got '' \(str\)"),
    (dict(type='Pretrained', checkpoint='x.pth', prefix=1), TypeError,
     r"SLABPVT: init_cfg 'prefix' must be a str such as 'backbone.', got 1 \(int\)"),
    ([dict(type='Pretrained', checkpoint=None)], ValueError, r'but no checkpoint'),
    ('x.pth', TypeError, r"SLABPVT: init_cfg must be a dict \(or a list of dicts\), got 'x.pth'"),
])
def test_bad_init_cfg_fails_at_construction(init_cfg, error, words):
    with pytest.raises(error, match=words):
        SLABPVT(**PVT_MINI, init_cfg=init_cfg)


# ============================================================================ folded vs trained
@functools.lru_cache(maxsize=None)
def _forms(family: str):
    """A trained-form and the folded state dict of the family's mini backbone (shared:
    the tests only read them)."""
    cls, kw = MINIS[family]
    torch.manual_seed(0)
    trained = cls(**kw).eval()
    folded = copy.deepcopy(trained)
    folded.switch_to_deploy()
    return trained.state_dict(), folded.state_dict()


class _Detector(nn.Module):
    """A model with the backbone under ``backbone.`` (as mmdet / mmseg models have)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(4, 4, 1)


def _load_by(route: str, model: nn.Module, sd: dict, tmp_path) -> None:
    """Load ``sd`` (the backbone's state dict) into ``model`` (a backbone) by ``route``."""
    if route.startswith('detector'):
        model = _Detector(model)
        sd = {**{f'backbone.{k}': v for k, v in sd.items()}, **{
            f'neck.{k}': v for k, v in model.neck.state_dict().items()}}
        route = route[len('detector '):]
    path = str(tmp_path / 'weights.pth')
    torch.save({'state_dict': sd, 'meta': {}}, path)
    if route == 'init_cfg':
        model.init_cfg = dict(type='Pretrained', checkpoint=path)
        model.init_weights()
    elif route == 'load_checkpoint strict':
        load_checkpoint(model, path, map_location='cpu', strict=True)
    elif route == 'load_checkpoint':
        load_checkpoint(model, path, map_location='cpu', strict=False)
    elif route == 'load_state_dict strict':
        model.load_state_dict(sd, strict=True)
    elif route == 'load_state_dict':
        model.load_state_dict(sd, strict=False)
    else:
        raise AssertionError(route)


ROUTES = ['init_cfg', 'load_checkpoint', 'load_checkpoint strict', 'load_state_dict',
          'load_state_dict strict', 'detector load_checkpoint', 'detector load_state_dict',
          'detector load_state_dict strict']


@pytest.mark.parametrize('route', ROUTES)
@pytest.mark.parametrize('family', list(MINIS))
def test_trained_checkpoint_refused_by_a_folded_backbone(family, route, tmp_path):
    cls, kw = MINIS[family]
    trained, _ = _forms(family)
    model = cls(**kw, deploy=True)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as exc:
        _load_by(route, model, trained, tmp_path)
    msg = str(exc.value)
    assert f'is a trained-form (unfolded) {cls.__name__} state dict' in msg
    assert 'has deploy=True and loads only re-parameterized (folded) weights' in msg
    assert 'python tools/deploy.py CONFIG CHECKPOINT OUT.pth' in msg
    if route.startswith('detector'):
        assert "'backbone.stages." in msg or "'backbone.patch_embed." in msg
    if route == 'init_cfg':
        assert 'weights.pth' in msg
    # nothing was loaded
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize('route', ROUTES)
@pytest.mark.parametrize('family', list(MINIS))
def test_folded_checkpoint_refused_by_a_trained_backbone(family, route, tmp_path):
    cls, kw = MINIS[family]
    _, folded = _forms(family)
    model = cls(**kw)
    with pytest.raises(ValueError) as exc:
        _load_by(route, model, folded, tmp_path)
    msg = str(exc.value)
    assert f'is a folded (deploy / re-parameterized) {cls.__name__} state dict' in msg
    assert 'is in trained form (deploy=False). Build it with deploy=True' in msg
    assert 'tools/deploy.py' in msg
    if family == 'swin':
        assert 'qkv_pad' in msg


@pytest.mark.parametrize('route', ROUTES)
@pytest.mark.parametrize('family', list(MINIS))
def test_matching_forms_load_by_every_route(family, route, tmp_path):
    cls, kw = MINIS[family]
    trained, folded = _forms(family)
    for deploy, sd in ((False, trained), (True, folded)):
        model = cls(**kw, deploy=deploy)
        _load_by(route, model, sd, tmp_path)
        got = model.state_dict()
        assert all(torch.equal(v, got[k]) for k, v in sd.items())


def test_checkpoint_without_lam_loads_as_lam_zero(tmp_path):
    """Release files and older mmslab checkpoints have no PRepBN ``lam`` entry."""
    cls, kw = MINIS['swin']
    trained, _ = _forms('swin')
    old = {k: v for k, v in trained.items() if not k.endswith('.lam')}
    assert len(old) < len(trained)
    for route in ('init_cfg', 'load_checkpoint strict', 'load_state_dict strict'):
        model = cls(**kw)
        _load_by(route, model, old, tmp_path)
        assert all(float(v) == 0.0 for k, v in model.state_dict().items() if k.endswith('.lam'))


# ============================================================================ never onto inputs
def test_check_outputs_compares_real_files(tmp_path):
    src = tmp_path / 'in.pth'
    src.write_bytes(b'x')
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    (tmp_path / 'dir_link').symlink_to(tmp_path)
    for out in ('link.pth', 'hard.pth', 'dir_link/in.pth', './in.pth'):
        path = str(tmp_path / out)
        assert same_file(path, src)
        with pytest.raises(ValueError, match=r'tool: refusing to overwrite the input checkpoint '
                           r'.*in\.pth: the output .* is the same file'):
            check_outputs({'output': path}, {'checkpoint': str(src)}, 'tool')
    check_outputs({'output': str(tmp_path / 'new.pth')}, {'checkpoint': str(src), 'x': None})
    with pytest.raises(ValueError, match='the a .* and the b .* are the same file'):
        check_outputs({'a': str(tmp_path / 'o.pth'), 'b': str(tmp_path / 'o.pth')}, {})


def test_convert_refuses_symlinked_and_hard_linked_source(release_checkpoint, tmp_path):
    src = release_checkpoint('slab_pvt_tiny')
    before = open(src, 'rb').read()
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    tool = load_tool('convert_checkpoint')
    for dst in ('link.pth', 'hard.pth'):
        with pytest.raises(ValueError, match=r'refusing to overwrite the input source '
                           r'checkpoint .*: the output checkpoint .* is the same file'):
            tool.main([src, str(tmp_path / dst), '--family', 'pvt'])
    assert open(src, 'rb').read() == before


@pytest.fixture
def deploy_inputs(tmp_path):
    config = tmp_path / 'model_config.py'
    config.write_text('model = dict(type="MissingOnPurpose")\n')
    ckpt = tmp_path / 'trained.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}}, ckpt)
    return str(config), str(ckpt), config.read_bytes(), ckpt.read_bytes()


@pytest.mark.parametrize('out,words', [
    ('{config}', r'refusing to overwrite the input config .*model_config\.py: the folded '
                 r'checkpoint .*model_config\.py is the same file'),
    ('{ckpt}', r'refusing to overwrite the input trained checkpoint .*trained\.pth: the folded '
               r'checkpoint'),
    ('{dir}/model.pth', r'refusing to overwrite the input config .*model_config\.py: the folded '
                        r'config \(<out stem>_config\.py\) .*model_config\.py is the same file'),
    ('{dir}/link.pth', r'refusing to overwrite the input trained checkpoint .* \(it resolves to '
                       r'.*trained\.pth\)'),
    ('{dir}/link_config.pth', r'refusing to overwrite the input config'),
])
def test_deploy_never_writes_onto_its_inputs(deploy_inputs, tmp_path, out, words):
    """`deploy.py CFG CKPT CFG`, an OUT whose <stem>_config.py is CFG, symlinks to inputs."""
    config, ckpt, config_bytes, ckpt_bytes = deploy_inputs
    os.symlink(ckpt, tmp_path / 'link.pth')
    os.symlink(config, tmp_path / 'link_config_config.py')
    out = out.format(config=config, ckpt=ckpt, dir=tmp_path)
    tool = load_tool('deploy')
    with pytest.raises(ValueError, match=words):
        tool.main([config, ckpt, out])
    assert open(config, 'rb').read() == config_bytes
    assert open(ckpt, 'rb').read() == ckpt_bytes


def test_recalibrate_never_writes_onto_its_inputs(deploy_inputs, tmp_path):
    from mmslab.bn_recalibration import recalibrate_checkpoint
    config, ckpt, config_bytes, ckpt_bytes = deploy_inputs
    os.symlink(ckpt, tmp_path / 'link.pth')
    for out, words in ((str(tmp_path / 'link.pth'), 'the input checkpoint'),
                       (config, 'the input config')):
        with pytest.raises(ValueError, match=f'recalibrate_checkpoint: refusing to overwrite '
                           f'{words}'):
            recalibrate_checkpoint(config, ckpt, 1, out)
    assert open(config, 'rb').read() == config_bytes
    assert open(ckpt, 'rb').read() == ckpt_bytes


# ============================================================================ CLI arguments
@pytest.mark.parametrize('tool,argv,words', [
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--shape', '0', '64'],
     "argument --shape: must be >= 1, got 0"),
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--shape', '64', '6.5'],
     "argument --shape: must be an int >= 1, got '6.5'"),
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--rtol', '0'],
     'argument --rtol: must be a finite number > 0, got 0'),
    ('deploy', ['c.py', 'k.pth', ''], 'argument out: must be a path, got an empty string'),
    ('recalibrate_bn', ['c.py', 'k.pth', '--iters', '0'], 'argument --iters: must be >= 1, got 0'),
    ('recalibrate_bn', ['c.py', 'k.pth', '--iters', 'all'],
     "argument --iters: must be an int >= 1, got 'all'"),
    ('recalibrate_bn', ['c.py', 'k.pth'], 'the following arguments are required: --iters'),
    ('convert_checkpoint', ['a.pth', 'b.pth', '--family', 'vit'],
     "argument --family: invalid choice: 'vit'"),
    ('make_demo_data', ['--max-objects', '0'], 'argument --max-objects: must be >= 1, got 0'),
    ('make_demo_data', ['--num-val', '-1'], 'argument --num-val: must be >= 0, got -1'),
    ('make_demo_data', ['--seed', '-3'], 'argument --seed: must be >= 0, got -3'),
])
def test_cli_arguments_are_validated(tool, argv, words, capsys):
    module = load_tool(tool)
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


# ============================================================================ atomic writes
def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    dst = tmp_path / 'sub' / 'out.bin'
    atomic_write_text('old', dst)  # creates the folder
    assert dst.read_text() == 'old'
    with pytest.raises(RuntimeError, match='disk on fire'):
        with atomic_write(dst) as f:
            f.write(b'partial new content')
            raise RuntimeError('disk on fire')
    assert dst.read_text() == 'old'
    assert os.listdir(dst.parent) == ['out.bin']  # the temporary file is gone
    atomic_save({'a': torch.arange(3)}, dst)
    assert torch.equal(torch.load(dst)['a'], torch.arange(3))
    assert os.listdir(dst.parent) == ['out.bin']
    # the umask applies as with open()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o666 & ~umask
    os.chmod(dst, 0o600)  # a replaced file keeps its permissions
    atomic_write_text('private', dst)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o600
    # a symlink is written through, not replaced
    target = tmp_path / 'target.txt'
    target.write_text('old')
    (tmp_path / 'link.txt').symlink_to(target)
    atomic_write_text('new', tmp_path / 'link.txt')
    assert osp.islink(tmp_path / 'link.txt') and target.read_text() == 'new'
    with pytest.raises(ValueError, match="mode must be 'w', 'wt' or 'wb', got 'a'"):
        with atomic_write(dst, 'a'):
            pass


def _temp_files(folder: str, name: str) -> list:
    return glob.glob(osp.join(folder, f'.{name}.*.tmp'))


def test_tool_killed_mid_write_leaves_the_old_file_or_none(tmp_path):
    """tools/convert_checkpoint.py (a real subprocess) gets SIGKILL while it writes a large
    output: the destination is the old file intact (or absent), never half a file."""
    src = str(tmp_path / 'release.pth')
    n = 4 * 2 ** 20  # 4 x 16 MiB of float32
    torch.save({'model': {f'layers.0.blocks.{i}.mlp.fc1.weight': torch.full((n, ), float(i))
                          for i in range(4)}}, src)
    out_dir = str(tmp_path / 'out')
    os.makedirs(out_dir)
    dst = osp.join(out_dir, 'converted.pth')
    old = b'an old, complete file that must survive'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'convert_checkpoint.py'), src, dst,
           '--family', 'swin']
    interrupted = {True: 0, False: 0}  # kills during the write, with / without an old file
    completed = 0
    for attempt in range(12):
        with_old = attempt % 2 == 0
        if with_old:
            with open(dst, 'wb') as f:
                f.write(old)
        elif osp.exists(dst):
            os.remove(dst)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            temps = _temp_files(out_dir, 'converted.pth')
            if temps and osp.getsize(temps[0]) > 0:
                time.sleep(random.uniform(0, 0.01))  # a random moment of the write
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
        leftovers = _temp_files(out_dir, 'converted.pth')
        if proc.returncode == -signal.SIGKILL and leftovers:
            # killed during the write: the destination is untouched (the old bytes, or
            # still absent); the partial data went only to the temporary file
            if with_old:
                assert open(dst, 'rb').read() == old
            else:
                assert not osp.exists(dst)
            for path in leftovers:
                os.remove(path)
            interrupted[with_old] += 1
        else:  # finished, or killed after the rename: the complete new file
            assert proc.returncode in (0, -signal.SIGKILL)
            sd = torch.load(dst)['state_dict']
            assert torch.equal(sd['stages.0.blocks.3.mlp.fc1.weight'], torch.full((n, ), 3.0))
            completed += 1
        if all(interrupted.values()):
            break
    assert all(interrupted.values()), (interrupted, completed)
    # and uninterrupted, the tool writes the complete file
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    assert torch.load(dst)['meta']['converted_from'] == src
    assert _temp_files(out_dir, 'converted.pth') == []


# ============================================================================ constructors
@pytest.mark.parametrize('kw,error,words', [
    (dict(num_heads=[1, 0, 5, 8]), ValueError,
     r'SLABPVT: num_heads must be a sequence of 4 ints >= 1, got \[1, 0, 5, 8\]: entry 1 is 0'),
    (dict(frozen_stages=1.0), TypeError,
     r'SLABPVT: frozen_stages must be an int in \[-1, 4\], got 1\.0 \(float\)'),
    (dict(frozen_stages=5), ValueError, r'SLABPVT: frozen_stages must be in \[-1, 4\], got 5'),
    (dict(out_indices=(0, 1.0)), TypeError,
     r'SLABPVT: out_indices must be a sequence of ints .*got \(0, 1\.0\): entry 1 is 1\.0 '
     r'\(float\)'),
    (dict(out_indices=2.0), TypeError, r'SLABPVT: out_indices must be .*got 2\.0 \(float\)'),
    (dict(out_indices=(0, 0)), ValueError,
     r'SLABPVT: out_indices=\(0, 0\) must be distinct stage indices in \[0, 3\]'),
    (dict(out_indices=()), ValueError, r'SLABPVT: out_indices must be .* at least 1 entry'),
    (dict(attn_types=None), TypeError,
     r"SLABPVT: attn_types must be a string of 4 letters, each 'L' \(SLA\) or 'S' "
     r"\(spatial-reduction softmax attention\), got None \(NoneType\)"),
    (dict(attn_types='LLXL'), ValueError, r"got 'LLXL' \('X' not accepted\)"),
    (dict(attn_types='LLL'), ValueError,
     r"SLABPVT: attn_types='LLL' has 3 entries, expected 4 \(one per stage: depths=\[1, 1, 1, "
     r"1\] has 4 stages\)"),
    (dict(pretrain_img_size=16), ValueError,
     r'SLABPVT: pretrain_img_size must be an int >= 32 or a \(height, width\) pair of ints '
     r'>= 32, got 16'),
    (dict(pretrain_img_size='224'), TypeError,
     r"SLABPVT: pretrain_img_size must be .*, got '224' \(str\)"),
    (dict(pretrain_img_size=(224, 224, 3)), ValueError, r'got \(224, 224, 3\)'),
    (dict(in_channels=0), ValueError, r'SLABPVT: in_channels must be >= 1, got 0'),
    (dict(drop_path_rate=-0.3), ValueError,
     r'SLABPVT: drop_path_rate must be in \[0, 1\], got -0\.3'),
    (dict(drop_rate=1.5), ValueError, r'SLABPVT: drop_rate must be in \[0, 1\], got 1\.5'),
    (dict(mlp_ratios=[8, 0, 4, 4]), ValueError,
     r'SLABPVT: mlp_ratios must be a sequence of 4 numbers > 0, got \[8, 0, 4, 4\]: entry 1 '
     r'is 0'),
    (dict(mlp_ratios=[8, 8, 4, 0.01]), ValueError,
     r'SLABPVT: mlp_ratios\[3\]=0\.01 gives an MLP of int\(64 \* 0\.01\) = 0 hidden channels'),
    (dict(sr_ratios=[8, 0, 2, 1], attn_types='SSSS'), ValueError,
     r'SLABPVT: sr_ratios must be a sequence of 4 ints >= 1 \(or one int for all\), got '
     r'\[8, 0, 2, 1\]: entry 1 is 0'),
    (dict(sr_ratios=-2), ValueError, r'SLABPVT: sr_ratios must be .*, got -2'),
    (dict(embed_dims=[16, 32, 0, 64]), ValueError, r'SLABPVT: embed_dims must be a sequence of 4 '
                                                   r'ints >= 1, got \[16, 32, 0, 64\]'),
    (dict(embed_dims=64), TypeError, r'SLABPVT: embed_dims must be a sequence of 4 ints >= 1, '
                                     r'got 64 \(int\)'),
    (dict(embed_dims=[16, 30, 40, 64], num_heads=[1, 4, 5, 8]), ValueError,
     r'SLABPVT: embed_dims\[1\]=30 is not divisible by num_heads\[1\]=4'),
    (dict(depths=[]), ValueError, r'SLABPVT: depths must be a sequence of ints >= 1 with at '
                                  r'least 1 entry, got \[\]'),
    (dict(depths=[1, 0, 1, 1]), ValueError, r'SLABPVT: depths must be .*entry 1 is 0'),
    (dict(arch=3), TypeError, r"SLABPVT: unknown arch 3; choose one of \['large', 'medium', "
                              r"'small', 'tiny'\] or give a dict"),
    (dict(with_cp='yes'), TypeError, r"SLABPVT: with_cp must be True or False, got 'yes'"),
])
def test_slab_pvt_arguments(kw, error, words):
    with pytest.raises(error, match=words):
        SLABPVT(**{**PVT_MINI, **kw})


@pytest.mark.parametrize('kw,error,words', [
    (dict(num_heads=[1, 0, 4, 8]), ValueError,
     r'SLABSwin: num_heads must be a sequence of 4 ints >= 1, got \[1, 0, 4, 8\]: entry 1 is 0'),
    (dict(num_heads=[1, 3, 4, 8]), ValueError,
     r'SLABSwin: stage 1 has embed_dims \* 2\*\*1 = 64 channels, not divisible by '
     r'num_heads\[1\]=3'),
    (dict(window_sizes=0), ValueError,
     r'SLABSwin: window_sizes must be a sequence of 4 ints >= 1 \(or one int for all\), got 0'),
    (dict(window_sizes=(56, 28, -7, 7)), ValueError, r'got \(56, 28, -7, 7\): entry 2 is -7'),
    (dict(window_sizes=(56, 28, 7.0, 7)), TypeError, r'entry 2 is 7\.0 \(float\)'),
    (dict(frozen_stages=0.0), TypeError,
     r'SLABSwin: frozen_stages must be an int in \[-1, 4\], got 0\.0 \(float\)'),
    (dict(frozen_stages=True), TypeError, r'got True \(bool\)'),
    (dict(out_indices=[0.0, 3]), TypeError, r'SLABSwin: out_indices .*entry 0 is 0\.0 \(float\)'),
    (dict(attn_types=None), TypeError,
     r"SLABSwin: attn_types must be a string of 4 letters, each 'L' \(SLA\) or 'S' \(window "
     r"softmax attention\), got None"),
    (dict(pretrain_img_size=0), ValueError,
     r'SLABSwin: pretrain_img_size must be an int >= 1 or a \(height, width\) pair'),
    (dict(pretrain_img_size=224.0), TypeError, r'got 224\.0 \(float\)'),
    (dict(in_channels=0), ValueError, r'SLABSwin: in_channels must be >= 1, got 0'),
    (dict(patch_size=0), ValueError, r'SLABSwin: patch_size must be >= 1, got 0'),
    (dict(drop_path_rate=-0.3), ValueError,
     r'SLABSwin: drop_path_rate must be in \[0, 1\], got -0\.3'),
    (dict(mlp_ratio=0), ValueError, r'SLABSwin: mlp_ratio must be > 0, got 0'),
    (dict(mlp_ratio=0.01), ValueError, r'SLABSwin: mlp_ratio=0\.01 gives stage 0 an MLP of '
                                       r'int\(32 \* 0\.01\) = 0 hidden channels'),
    (dict(embed_dims=0), ValueError, r'SLABSwin: embed_dims must be >= 1, got 0'),
    (dict(embed_dims=32.0), TypeError, r'SLABSwin: embed_dims is one int \(the stage-1 width'),
    (dict(depths=[2, 2, 2, 2, 2]), ValueError,
     r'SLABSwin: num_heads=\[1, 2, 4, 8\] has 4 entries, expected 5'),
    (dict(arch='huge', embed_dims=None, depths=None, num_heads=None), ValueError,
     r"SLABSwin: unknown arch 'huge'"),
    (dict(deploy=1), TypeError, r'SLABSwin: deploy must be True or False, got 1 \(int\)'),
])
def test_slab_swin_arguments(kw, error, words):
    with pytest.raises(error, match=words):
        SLABSwin(**{**SWIN_MINI, **kw})


def test_unusual_but_valid_arguments_work():
    import numpy as np
    swin = SLABSwin(**{**SWIN_MINI, 'num_heads': [np.int64(1), 2, 4, 8]}, attn_types=['l', 'l',
                    's', 's'], window_sizes=7, out_indices=-1, drop_path_rate=0,
                    pretrain_img_size=[224, 320]).eval()
    assert swin.arch_settings['attn_types'] == 'LLSS' and swin.out_indices == (3, )
    assert swin.arch_settings['window_sizes'] == [7, 7, 7, 7]
    pvt = SLABPVT(**PVT_MINI, sr_ratios=2, attn_types='ssll', out_indices=(3, 0),
                  pretrain_img_size=(64, 96), mlp_ratios=(8, 8, 4, 4.5)).eval()
    assert pvt.out_indices == (0, 3)
    with torch.no_grad():
        assert [o.shape[1] for o in pvt(torch.randn(1, 3, 64, 64))] == [16, 64]
        assert swin(torch.randn(1, 3, 64, 64))[0].shape == (1, 256, 2, 2)


@pytest.mark.parametrize('build,error,words', [
    (lambda: PRepBN(0), ValueError, r'PRepBN: channels must be >= 1, got 0'),
    (lambda: PRepBN(8.0), TypeError, r'PRepBN: channels must be an int >= 1, got 8\.0 '
                                        r'\(float\)'),
    (lambda: PRepBN(8, ln_eps=0), ValueError, r'PRepBN: ln_eps must be > 0, got 0'),
    (lambda: PRepBN(8, bn_eps=-1e-5), ValueError, r'PRepBN: bn_eps must be > 0, got -1e-05'),
    (lambda: PRepBN(8, momentum=2), ValueError,
     r'PRepBN: momentum \(or None\) must be in \[0, 1\], got 2'),
    (lambda: RepBN(-4), ValueError, r'RepBN: channels must be >= 1, got -4'),
    (lambda: RepBN(4, eps='1e-5'), TypeError, r"RepBN: eps must be a number > 0, got '1e-5'"),
    (lambda: RepBN(4, momentum=-0.1), ValueError, r'RepBN: momentum \(or None\) must be in'),
    (lambda: SLA(0, 1, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: embed_dims must be >= 1, got 0'),
    (lambda: SLA(8, 0, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: num_heads must be >= 1, got 0'),
    (lambda: SLA(8, 3, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: embed_dims 8 is not divisible by num_heads 3'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=4), ValueError,
     r'SimplifiedLinearAttention: kernel_size must be odd .*, got 4'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=0), ValueError,
     r'SimplifiedLinearAttention: kernel_size must be >= 1, got 0'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=5.0), TypeError, r'kernel_size must be an int'),
    (lambda: SLA(8, 2, (0, 4)), ValueError, r'SimplifiedLinearAttention: pos_grid must be'),
    (lambda: SLA(8, 2, (4, 4), qkv_layout='kvq'), ValueError,
     r"SimplifiedLinearAttention: qkv_layout must be one of \['qkv', 'q_kv'\], got 'kvq'"),
])
def test_norm_and_attention_arguments(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_norm_and_attention_unusual_but_valid():
    assert PRepBN(4, momentum=None).norm2.bn.momentum is None  # cumulative average
    assert RepBN(4, eps=1).bn.eps == 1
    attn = SLA(6, 6, 3, kernel_size=1)  # one channel per head, square grid as an int
    assert attn.pos_grid == (3, 3)
