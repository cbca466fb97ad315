"""The deploy fold: exact (<= 1e-9 relative in float64), structure without norms in the
folded paths, dtype kept, ``deploy=True`` loads folded weights strictly."""
import copy

import pytest
import torch
import torch.nn as nn
from _fold_terms import randomize_repbn
from _mini import config_kwargs, mini_spec

from mmslab.models import SLABSwin, reparameterize
from mmslab.prepbn import PRepBN, RepBN

MINIS = {
    'pvt_LLLL': mini_spec('slab_pvt', depths=[2, 1, 1, 1]),
    'pvt_SSSS': mini_spec('pvt_prepbn', depths=[2, 1, 1, 1]),
    'swin_LLSS': mini_spec('slab_swin', embed_dims=32),
    'swin_SSSS_w7': mini_spec('swin_prepbn', embed_dims=32),
}
# non-square, not a multiple of the window (7/28/56) or patch (4), maps smaller than a window
SHAPES = [(224, 224), (130, 170), (96, 128), (37, 53), (250, 90), (64, 200)]


def random_model(cls, kw, dtype=torch.float64, seed=0):
    """Random weights *and* random BN statistics / alphas, so every fold term matters."""
    torch.manual_seed(seed)
    model = cls(**kw).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if (p.dim() == 1 and name.endswith('weight')) else 0.0,
                      0.1 if p.dim() > 1 else 0.3)
    return randomize_repbn(model).eval()


@pytest.mark.parametrize('name', list(MINIS))
def test_fold_is_exact_in_float64(name):
    cls, kw = MINIS[name]
    model = random_model(cls, kw)
    folded = copy.deepcopy(model)
    folded.switch_to_deploy()
    worst = 0.0
    for i, hw in enumerate(SHAPES):
        x = torch.randn(1 + i % 2, 3, *hw, dtype=torch.float64)
        with torch.no_grad():
            for a, b in zip(model(x), folded(x)):
                assert a.shape == b.shape
                worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
    assert worst <= 1e-9, worst


@pytest.mark.parametrize('name', list(MINIS))
def test_folded_structure(name):
    cls, kw = MINIS[name]
    folded = random_model(cls, kw, torch.float32)
    folded.switch_to_deploy()
    assert folded.deploy
    assert not any(isinstance(m, (PRepBN, RepBN, nn.BatchNorm1d)) for m in folded.modules())
    layer_norms = [n for n, m in folded.named_modules() if isinstance(m, nn.LayerNorm)]
    assert layer_norms == ([f'norm{i}' for i in range(4)] if cls is SLABSwin else [])
    assert all(p.dtype == torch.float32 for p in folded.parameters())
    # deploy=True builds the same structure: the folded weights load strictly
    direct = cls(**kw, deploy=True)
    direct.load_state_dict(folded.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 136)
    with torch.no_grad():
        for a, b in zip(direct.eval()(x), folded(x)):
            assert torch.equal(a, b)


def test_fold_keeps_half_precision_dtype():
    cls, kw = MINIS['swin_LLSS']
    model = random_model(cls, kw, torch.float32)
    model.to(torch.bfloat16).switch_to_deploy()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_non_folded_checkpoint_into_deploy_backbone_explains(tmp_path):
    cls, kw = MINIS['pvt_LLLL']
    path = tmp_path / 'trained.pth'
    torch.save({'state_dict': cls(**kw).state_dict()}, path)
    model = cls(**kw, deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match='deploy=True and loads only re-parameterized'):
        model.init_weights()


def test_reparameterize_finds_backbones_in_a_wrapper():
    cls, kw = MINIS['swin_LLSS']
    wrapper = nn.Sequential(random_model(cls, kw, torch.float32), nn.Identity())
    assert reparameterize(wrapper) == 1
    assert wrapper[0].deploy
    with pytest.raises(ValueError, match='has nothing to re-parameterize'):
        reparameterize(nn.Linear(2, 2))


DET_CFG = f'''
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='SLABSwin', {config_kwargs('slab_swin', embed_dims=32)}),
    neck=dict(in_channels=[32, 64, 128, 256]))
'''
SEG_CFG = f'''
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=None, size_divisor=32),
    backbone=dict(_delete_=True, type='SLABPVT', {config_kwargs('slab_pvt', attn_types='LLSS')}),
    decode_head=dict(in_channels=[16, 32, 40, 64], channels=32),
    auxiliary_head=dict(in_channels=40, channels=16))
'''


@pytest.mark.parametrize('cfg_text', [DET_CFG, SEG_CFG], ids=['mask_rcnn', 'upernet'])
def test_deploy_tool_on_a_detector_and_a_segmentor(tmp_path, cfg_text, load_tool, capsys):
    """`tools/deploy.py` (its main(), in this process: its command line runs as a
    subprocess in tests/test_e2e.py) on a stock mmdet and mmseg config."""
    from mmengine.runner import load_checkpoint

    from mmslab.deploy import build_model_from_config
    config = tmp_path / 'model.py'
    config.write_text(cfg_text)
    model = build_model_from_config(str(config))
    model.init_weights()
    randomize_repbn(model.backbone)  # a 'trained' state: random BN statistics and alphas
    ckpt = tmp_path / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 7}}, ckpt)
    before = ckpt.read_bytes()
    out = tmp_path / 'deploy' / 'folded.pth'
    deploy = load_tool('deploy')
    deploy.main([str(config), str(ckpt), str(out)])
    assert 'relative difference' in capsys.readouterr().out
    assert ckpt.read_bytes() == before  # the trained checkpoint is untouched
    folded = build_model_from_config(str(tmp_path / 'deploy' / 'folded_config.py'))
    assert folded.backbone.deploy
    meta = load_checkpoint(folded, str(out), map_location='cpu', strict=True)['meta']
    assert meta['iter'] == 7 and meta['fold_relative_error'] <= 1e-4
    with pytest.raises(ValueError, match='refusing to overwrite'):
        deploy.main([str(config), str(ckpt), str(ckpt)])
    assert ckpt.read_bytes() == before
