"""SLABPVT / SLABSwin: shapes for any input, options users expect, clear errors, and the
release checkpoints (full-size, synthesised from the reference key lists)."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmslab  # noqa: F401  (registers the backbones)
from mmslab.models import PRepBN, RepBN, SLABPVT, SLABSwin, SimplifiedLinearAttention
from mmslab.models.checkpoint import convert_checkpoint_file

PVT_MINI = dict(embed_dims=[16, 32, 40, 64], num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
                depths=[2, 1, 1, 1])
SWIN_MINI = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def build(cls, **kw):
    model = cls(**kw)
    model.init_weights()
    return model


# ---------------------------------------------------------------- shapes for any input
@pytest.mark.parametrize('hw', [(224, 224), (96, 160), (130, 170), (33, 65), (250, 90)])
def test_pvt_any_input_size(hw):
    model = build(SLABPVT, **PVT_MINI).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    h, w = hw
    for i, (out, c) in enumerate(zip(outs, PVT_MINI['embed_dims'])):
        h, w = h // (4 if i == 0 else 2), w // (4 if i == 0 else 2)  # strided convs floor
        assert out.shape == (1, c, h, w)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('hw', [(224, 224), (96, 128), (130, 170), (37, 53), (16, 300)])
@pytest.mark.parametrize('attn_types,windows', [('LLSS', (56, 28, 7, 7)), ('SSSS', (7,) * 4)])
def test_swin_any_input_size(hw, attn_types, windows):
    model = build(SLABSwin, **SWIN_MINI, attn_types=attn_types, window_sizes=windows).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *hw))
    h, w = -(-hw[0] // 4), -(-hw[1] // 4)  # padded to the patch size, then ceil per merge
    for i, out in enumerate(outs):
        assert out.shape == (1, 32 * 2 ** i, h, w)
        assert torch.isfinite(out).all()
        h, w = -(-h // 2), -(-w // 2)


def test_batch_elements_are_independent_in_eval():
    """Eval mode uses running statistics: a sample's output does not depend on its batch."""
    for model in (build(SLABPVT, **PVT_MINI), build(SLABSwin, **SWIN_MINI)):
        model.eval()
        x = torch.randn(3, 3, 96, 128)
        with torch.no_grad():
            full = model(x)
            single = model(x[1:2])
        for a, b in zip(full, single):
            torch.testing.assert_close(a[1:2], b, rtol=1e-4, atol=1e-5)


def test_out_indices_and_registry():
    model = MODELS.build(dict(type='SLABSwin', **SWIN_MINI, out_indices=(1, 3)))
    model.init_weights()
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 256]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')
    pvt = MODELS.build(dict(type='SLABPVT', **PVT_MINI, out_indices=(2,)))
    assert [o.shape[1] for o in pvt.eval()(torch.randn(1, 3, 64, 64))] == [40]


def test_arch_presets():
    swin_s = SLABSwin(arch='small')
    assert [len(s.blocks) for s in swin_s.stages] == [2, 2, 18, 2]
    assert swin_s.num_features == [96, 192, 384, 768]
    pvt_m = SLABPVT(arch='medium')
    assert [len(s.blocks) for s in pvt_m.stages] == [3, 4, 18, 3]
    assert SLABSwin(arch='base').num_features[0] == 128


# ---------------------------------------------------------------- options
def test_norm_eval_and_frozen_stages():
    model = build(SLABSwin, **SWIN_MINI, frozen_stages=1, norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(not p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stages[0].training and model.stages[1].training

    pvt = build(SLABPVT, **PVT_MINI, frozen_stages=2, norm_eval=False).train()
    assert all(m.training for m in pvt.stages[2].modules() if isinstance(m, _BatchNorm))
    assert all(not p.requires_grad for s in pvt.stages[:2] for p in s.parameters())
    assert all(p.requires_grad for p in pvt.stages[2].parameters())


def test_norm_eval_keeps_running_stats_during_training():
    model = build(SLABPVT, **PVT_MINI, norm_eval=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    model(torch.randn(2, 3, 64, 64))[-1].sum().backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize('cls,kw', [(SLABPVT, PVT_MINI), (SLABSwin, SWIN_MINI)])
def test_with_cp_same_outputs_and_grads(cls, kw):
    torch.manual_seed(0)
    ref = build(cls, **kw, drop_path_rate=0.0, norm_eval=False)
    ckp = cls(**kw, drop_path_rate=0.0, norm_eval=False, with_cp=True)
    ckp.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96)
    for model in (ref, ckp):
        model.train()
        sum(o.square().mean() for o in model(x)).backward()
    for (name, a), b in zip(ref.named_parameters(), ckp.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- layers
def test_prepbn_mixes_ln_and_repbn_in_training_and_eval():
    torch.manual_seed(0)
    norm = PRepBN(8).train()
    x = torch.randn(4, 10, 8)
    ln = nn.functional.layer_norm(x, (8,), eps=1e-6)
    bn = nn.functional.batch_norm(x.reshape(-1, 8), None, None, training=True, eps=1e-5).view_as(x)
    norm.lam = 0.25
    torch.testing.assert_close(norm(x), 0.25 * ln + 0.75 * (bn + x))
    norm.lam = 1.0
    torch.testing.assert_close(norm(x), ln)
    norm.eval()  # eval = training's function, with RepBN's running statistics
    bn_eval = nn.functional.batch_norm(x.transpose(1, 2), norm.norm2.bn.running_mean,
                                       norm.norm2.bn.running_var, eps=1e-5).transpose(1, 2)
    torch.testing.assert_close(norm(x), ln)
    norm.lam = 0.25
    torch.testing.assert_close(norm(x), 0.25 * ln + 0.75 * (bn_eval + x))
    norm.lam = 0
    assert torch.equal(norm(x), norm.norm2(x))  # exactly RepBN when converged
    torch.testing.assert_close(norm(x), bn_eval + x)
    with pytest.raises(ValueError, match=r'PRepBN\(8\) got a tensor of shape'):
        norm(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r'lam must be in \[0, 1\], got 1.5'):
        norm.lam = 1.5


def test_prepbn_lam_travels_with_the_weights(tmp_path):
    model = build(SLABPVT, **PVT_MINI)
    mmslab.models.set_prepbn_lam(model, 0.3)
    sd = model.state_dict()
    assert sd['stages.0.blocks.0.norm1.lam'].item() == pytest.approx(0.3)
    torch.save({'state_dict': sd}, tmp_path / 'mid.pth')
    fresh = SLABPVT(**PVT_MINI)
    from mmengine.runner import load_checkpoint
    load_checkpoint(fresh, str(tmp_path / 'mid.pth'), strict=True)
    lams = {float(m.lam) for m in fresh.modules() if isinstance(m, PRepBN)}
    assert len(lams) == 1 and lams.pop() == pytest.approx(0.3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), fresh.eval()(x)):
            assert torch.equal(a, b)
    # files without lam (the release's, older mmslab ones) hold converged models: lam = 0
    old = {k: v for k, v in sd.items() if not k.endswith('.lam')}
    fresh.load_state_dict(old)
    assert {float(m.lam) for m in fresh.modules() if isinstance(m, PRepBN)} == {0.0}
    # a mid-schedule model cannot be folded
    with pytest.raises(ValueError, match='cannot fold a PRepBN with lam=0.3'):
        model.switch_to_deploy()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_sla_core_runs_in_float32_for_half_inputs(dtype):
    torch.manual_seed(0)
    attn = SimplifiedLinearAttention(16, 2, (8, 8)).eval()
    with torch.no_grad():
        attn.positional_encoding.normal_()
    x = torch.randn(2, 64, 16)
    ref = attn(x, (8, 8))
    half = copy.deepcopy(attn).to(dtype)
    out = half(x.to(dtype), (8, 8))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(attn(x, (8, 8))).all()
    with pytest.raises(ValueError, match='do not form a 7x9 grid'):
        attn(x, (7, 9))


def test_sla_positional_encoding_resized_to_the_grid():
    attn = SimplifiedLinearAttention(8, 1, (4, 4), qkv_layout='q_kv').eval()
    with torch.no_grad():
        attn.positional_encoding.normal_()
    assert attn(torch.randn(1, 6 * 10, 8), (6, 10)).shape == (1, 60, 8)


# ---------------------------------------------------------------- clear errors
@pytest.mark.parametrize('build_kw,match', [
    (dict(arch='huge'), "unknown arch 'huge'"),
    (dict(**SWIN_MINI, attn_types='LLS'), 'attn_types=.* has 3 entries'),
    (dict(**SWIN_MINI, attn_types='LLXS'), "'L' \\(SLA\\) or 'S'"),
    (dict(**SWIN_MINI, out_indices=(4,)), 'out_indices=\\(4,\\)'),
    (dict(**SWIN_MINI, frozen_stages=5), 'frozen_stages must be in'),
    (dict(embed_dims=[32, 64], depths=[2, 2], num_heads=[1, 2]), 'embed_dims is one int'),
])
def test_swin_bad_arguments(build_kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SLABSwin(**build_kw)


def test_bad_inputs_are_explained():
    pvt = build(SLABPVT, **PVT_MINI).eval()
    with pytest.raises(ValueError, match=r'at least 32x32 pixels, got \(16, 64\)'):
        pvt(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r'expects images \(B, 3, H, W\), got .* \(1, 1, 64, 64\)'):
        pvt(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='embed_dims=.* has 3 entries'):
        SLABPVT(embed_dims=[16, 32, 40], depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        SLABPVT(embed_dims=[16, 30, 40, 64], depths=[1, 1, 1, 1], num_heads=[1, 4, 5, 8])


# ---------------------------------------------------------------- release checkpoints
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
    src = build(SLABPVT, **PVT_MINI)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {**{f'backbone.{k}': v for k, v in src.state_dict().items()},
                               'neck.conv.weight': torch.zeros(1)}}, path)
    dst = build(SLABPVT, **PVT_MINI, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    assert isinstance(dst.stages[0].patch_embed.norm.norm2, RepBN)
