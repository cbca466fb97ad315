"""From-scratch init of the SLAB backbones: the release's default and the measured recipe
``init_cfg=dict(type='SLABScratch', linear='mmdet_pvt', repbn_alpha=0.0)``, through
mmengine's init_cfg (alone, with other initializers, with Pretrained, inside a detector)."""
import math

import pytest
import torch
from _mini import mini_kwargs
from mmengine.registry import MODELS, WEIGHT_INITIALIZERS

import mmslab  # noqa: F401  (registers the backbones and the initializer)
from mmslab.models import SLABPVT, SLABScratchInit, SLABSwin
from mmslab.prepbn import RepBN

PVT_MINI = mini_kwargs('pvt_demo')  # the recipe's model: the demo detector's backbone
SWIN_MINI = mini_kwargs('slab_swin', embed_dims=32)
RECIPE = dict(type='SLABScratch', linear='mmdet_pvt', repbn_alpha=0.0)


def build(cls, **kw):
    model = cls(**kw)
    model.init_weights()
    return model


def alphas(model):
    return {float(m.alpha) for m in model.modules() if isinstance(m, RepBN)}


@pytest.mark.parametrize('cls,kw', [(SLABPVT, PVT_MINI), (SLABSwin, SWIN_MINI)])
def test_default_is_the_release_init(cls, kw):
    model = build(cls, **kw)
    assert alphas(model) == {1.0}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.std() < 0.03, name  # truncated normal, std 0.02
            assert m.bias is None or not m.bias.any()


def test_recipe_on_pvt():
    model = build(SLABPVT, **PVT_MINI, init_cfg=RECIPE)
    assert alphas(model) == {0.0}  # every RepBN (blocks, patch embeddings) starts as a BN
    blk = model.stages[0].blocks[0]
    c = 32
    bound = math.sqrt(6 / (c + 3 * c))  # xavier-uniform of the joint (3C, C) projection
    for lin in (blk.attn.q, blk.attn.kv):
        assert lin.weight.abs().max() <= bound and lin.weight.std() > 0.8 * bound / math.sqrt(3)
        assert not lin.bias.any()
    # MLP: fan-out normal (std sqrt(2 / out_features))
    assert float(blk.mlp.fc1.weight.std()) == pytest.approx(math.sqrt(2 / (4 * c)), rel=0.1)
    assert float(blk.mlp.fc2.weight.std()) == pytest.approx(math.sqrt(2 / c), rel=0.1)
    assert blk.attn.proj.weight.std() < 0.03  # the rest keeps the release's init
    # a trained parameter, not a constant
    assert blk.norm1.norm2.alpha.requires_grad
    out = model.train()(torch.randn(2, 3, 64, 64))
    sum(o.float().mean() for o in out).backward()
    assert blk.norm1.norm2.alpha.grad is not None


def test_recipe_on_swin_and_alpha_only():
    model = build(SLABSwin, **SWIN_MINI, init_cfg=dict(type='SLABScratch', repbn_alpha=0.25))
    assert alphas(model) == {0.25}
    assert model.stages[0].blocks[0].attn.qkv.weight.std() < 0.03  # linear='release'
    model = build(SLABSwin, **SWIN_MINI, init_cfg=RECIPE)
    assert model.stages[0].blocks[0].attn.qkv.weight.std() > 0.1


def test_init_cfg_list_and_pretrained_order(tmp_path):
    """Initializers first (in order), the Pretrained checkpoint last: it wins."""
    model = build(SLABPVT, **PVT_MINI, init_cfg=[
        RECIPE, dict(type='Constant', layer='Linear', val=0.5, bias=0.)])
    assert (model.stages[0].blocks[0].attn.q.weight == 0.5).all() and alphas(model) == {0.0}
    src = build(SLABPVT, **PVT_MINI)  # alpha 1, release init
    path = str(tmp_path / 'src.pth')
    torch.save({'state_dict': src.state_dict()}, path)
    dst = build(SLABPVT, **PVT_MINI,
                init_cfg=[RECIPE, dict(type='Pretrained', checkpoint=path)])
    assert alphas(dst) == {1.0}
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_recipe_in_a_detector_config():
    """As the demo config uses it: mmdet scope, backbone init_cfg, detector init_weights."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as DET_MODELS
    cfg = Config.fromfile('configs/demo/mask_rcnn_slab_pvt_demo.py')
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = RECIPE
    det = DET_MODELS.build(cfg.model)
    det.init_weights()
    assert alphas(det.backbone) == {0.0}
    assert det.backbone.stages[0].blocks[0].attn.q.weight.std() > 0.1


@pytest.mark.parametrize('cfg,error,words', [
    (dict(type='SLABScratch', linear='xavier'), ValueError,
     r"SLABScratch: linear must be one of \['release', 'mmdet_pvt'\], got 'xavier'"),
    (dict(type='SLABScratch', repbn_alpha='0'), TypeError,
     r"SLABScratch: repbn_alpha must be a number, got '0' \(str\)"),
    (dict(type='SLABScratch', repbn_alpha=float('nan')), ValueError, 'repbn_alpha must be'),
    (dict(RECIPE, checkpoint='x.pth'), TypeError,
     r"SLABScratch: unexpected argument\(s\) \['checkpoint'\] \(a key of the base config's "
     r"init_cfg: set _delete_=True .*; it takes linear \('release' \| 'mmdet_pvt'\)"),
    ([RECIPE, 'x.pth'], TypeError,
     r"SLABPVT: every entry of init_cfg must be a dict with a 'type'.*got 'x.pth'"),
])
def test_bad_recipe_fails_at_construction(cfg, error, words):
    with pytest.raises(error, match=words):
        SLABPVT(**PVT_MINI, init_cfg=cfg)


def test_registered_in_mmengine_root():
    assert WEIGHT_INITIALIZERS.get('SLABScratch') is SLABScratchInit
    assert MODELS.get('SLABPVT') is SLABPVT
