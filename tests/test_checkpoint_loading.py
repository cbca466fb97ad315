"""Checkpoint loading: a file that is not a usable checkpoint (empty, truncated, corrupted,
text, legacy, no weights, missing, a folder) is diagnosed by name wherever it is read
(init_cfg, the tools); folded and trained weights never mix, by any loading route; files
without PRepBN's lam load as converged (lam = 0); the release's ImageNet files (full size,
synthesised from the reference key lists) load as they are, wrapped or not, and the wrong
architecture is refused; a detector checkpoint initialises a backbone (``backbone.``)."""
import copy
import os
import os.path as osp
import zipfile

import pytest
import torch
import torch.nn as nn
from _mini import mini_backbone, mini_kwargs, mini_spec, trained_and_folded
from mmengine.runner import load_checkpoint

from mmslab.deploy import deploy_checkpoint
from mmslab.models import SLABPVT, SLABSwin
from mmslab.prepbn import RepBN
from mmslab.checkpoint_io import read_checkpoint
from mmslab.models.key_conversion import convert_checkpoint_file

# family -> mini backbone (name in _mini.MINI, overrides)
FAMILIES = {'pvt': ('slab_pvt', {}), 'swin': ('slab_swin', dict(embed_dims=32))}
MINIS = {family: mini_spec(name, **kw) for family, (name, kw) in FAMILIES.items()}
PVT = mini_kwargs('slab_pvt', depths=[2, 1, 1, 1])  # the detector checkpoint's backbone


def build(cls, **kw):
    model = cls(**kw)
    model.init_weights()
    return model


# ============================================================================ broken files
def _good_file(path) -> str:
    torch.save({'state_dict': mini_backbone('slab_pvt').state_dict()}, path)
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
        model = mini_backbone('slab_pvt', init_cfg=dict(type='Pretrained', checkpoint=path))
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


# ============================================================================ folded vs trained
def _forms(family: str):
    """A trained-form and the folded state dict of the family's mini backbone (shared:
    the tests only read them)."""
    name, overrides = FAMILIES[family]
    return trained_and_folded(name, **overrides)


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


# ===================================================================== release and detector files
@pytest.mark.parametrize('wrap', ['model', 'state_dict', None])
def test_release_swin_tiny_loads_as_is(release_checkpoint, release_weights, wrap):
    path = release_checkpoint('slab_swin_tiny', wrap)
    model = build(SLABSwin, arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=path))
    ref = release_weights('slab_swin_tiny')
    own = model.state_dict()
    assert torch.equal(own['stages.2.blocks.5.attn.qkv.weight'],
                       ref['layers.2.blocks.5.attn.qkv.weight'])
    assert torch.equal(own['stages.0.blocks.1.attn.positional_encoding'],
                       ref['layers.0.blocks.1.attn.positional_encoding'])
    assert torch.equal(own['stages.1.downsample.norm.norm2.bn.running_var'],
                       ref['layers.1.downsample.norm.norm2.bn.running_var'])
    assert torch.equal(own['norm3.weight'], torch.ones(768))  # new output norm at its init


def test_release_pvt_tiny_loads_and_runs_non_square(release_checkpoint, release_weights):
    path = release_checkpoint('slab_pvt_tiny')
    model = build(SLABPVT, arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=path))
    ref = release_weights('slab_pvt_tiny')
    assert torch.equal(model.state_dict()['stages.3.pos_embed'], ref['pos_embed4'])
    assert torch.equal(model.state_dict()['stages.1.blocks.1.mlp.fc2.bias'],
                       ref['block2.1.mlp.fc2.bias'])
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 160, 288))
    assert [tuple(o.shape[2:]) for o in outs] == [(40, 72), (20, 36), (10, 18), (5, 9)]


def test_release_swin_window_change_resizes_relative_tables(release_checkpoint):
    path = release_checkpoint('slab_swin_tiny')
    model = build(SLABSwin, arch='tiny', window_sizes=(56, 28, 12, 12),
                  init_cfg=dict(type='Pretrained', checkpoint=path))
    assert model.stages[2].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 12)


@pytest.mark.parametrize('ckpt,cls,kw,match', [
    ('slab_swin_tiny', SLABSwin, dict(arch='small'), r'depths \[2, 2, 6, 2\]'),
    ('slab_swin_small', SLABSwin, dict(arch='tiny'), r'depths \[2, 2, 18, 2\]'),
    ('slab_swin_tiny', SLABPVT, dict(arch='tiny'), 'release SLAB-Swin'),
    ('slab_pvt_tiny', SLABSwin, dict(arch='tiny'), 'release SLAB-PVT'),
    ('slab_pvt_tiny', SLABPVT, dict(arch='small'), r'depths \[2, 2, 2, 2\]'),
])
def test_wrong_architecture_is_refused(release_checkpoint, ckpt, cls, kw, match):
    model = cls(**kw, init_cfg=dict(type='Pretrained', checkpoint=release_checkpoint(ckpt)))
    with pytest.raises(ValueError, match=match) as err:
        model.init_weights()
    assert f'does not fit {cls.__name__}' in str(err.value)


def test_convert_tool_output_loads_strictly(release_checkpoint, tmp_path):
    src = release_checkpoint('slab_swin_tiny')
    dst = str(tmp_path / 'converted.pth')
    assert convert_checkpoint_file(src, dst, 'swin') > 0
    sd = torch.load(dst)['state_dict']
    model = SLABSwin(arch='tiny')
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert unexpected == [] and all(k.startswith('norm') for k in missing)
    with pytest.raises(ValueError, match='refusing to overwrite'):
        convert_checkpoint_file(src, src, 'swin')
    with pytest.raises(ValueError, match='does not look like a SLAB-PVT'):
        convert_checkpoint_file(src, str(tmp_path / 'x.pth'), 'pvt')


def test_detector_checkpoint_backbone_prefix(tmp_path):
    """A full detector checkpoint of ours can initialise a backbone (``backbone.`` keys)."""
    src = build(SLABPVT, **PVT)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {**{f'backbone.{k}': v for k, v in src.state_dict().items()},
                               'neck.conv.weight': torch.zeros(1)}}, path)
    dst = build(SLABPVT, **PVT, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    assert isinstance(dst.stages[0].patch_embed.norm.norm2, RepBN)
