"""SLABPVT / SLABSwin: shapes for any input, options users expect, the layers, and bad inputs
explained. (Constructor arguments: tests/test_validation.py; checkpoints, the release's
included: tests/test_checkpoint_loading.py.)"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmslab  # noqa: F401  (registers the backbones)
from _mini import mini_kwargs
from _tolerance import EXACT, assert_rel_close

from mmslab.models import SLABPVT, SLABSwin, SimplifiedLinearAttention
from mmslab.prepbn import PRepBN

PVT_MINI = mini_kwargs('slab_pvt', depths=[2, 1, 1, 1])
SWIN_MINI = mini_kwargs('slab_swin', embed_dims=32)


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
        model.eval().double()  # an exactness claim: float64 (float32 GEMMs block by batch)
        x = torch.randn(3, 3, 96, 128, dtype=torch.float64)
        with torch.no_grad():
            full = model(x)
            single = model(x[1:2])
        for a, b in zip(full, single):
            assert_rel_close(a[1:2], b, EXACT)


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
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # the same function: float64
    for model in (ref, ckp):
        model.train().double()
        sum(o.square().mean() for o in model(x)).backward()
    for (name, a), b in zip(ref.named_parameters(), ckp.parameters()):
        assert_rel_close(b.grad, a.grad, EXACT, msg=name)


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
    mmslab.prepbn.set_prepbn_lam(model, 0.3)
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


def test_sla_fixed_grid_keeps_its_table_when_traced():
    """Swin's windows (``fixed_grid=True``): P as it is, also in a traced graph (no
    resize of P to its own grid: a constant Resize that ONNX exporters' optimisers fold
    at export time, slowly), the same function; another grid is an error."""
    torch.manual_seed(0)
    attn = SimplifiedLinearAttention(8, 2, (4, 4), fixed_grid=True).eval()
    free = SimplifiedLinearAttention(8, 2, (4, 4)).eval()
    free.load_state_dict(attn.state_dict())
    with torch.no_grad():
        attn.positional_encoding.normal_()
        free.positional_encoding.copy_(attn.positional_encoding)
    x = torch.randn(3, 16, 8)

    class OnGrid(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t, (4, 4))

    def ops(m):
        return {n.kind() for n in torch.jit.trace(OnGrid(m), (x, )).inlined_graph.nodes()}

    with torch.no_grad():
        torch.testing.assert_close(attn(x, (4, 4)), free(x, (4, 4)), rtol=0, atol=0)
        assert 'aten::upsample_bilinear2d' not in ops(attn)
        assert 'aten::upsample_bilinear2d' in ops(free)
    with pytest.raises(ValueError, match=r'fixed_grid=True\) takes 4x4 grids, got 2x8'):
        attn(torch.randn(1, 16, 8), (2, 8))
    with pytest.raises(TypeError, match='fixed_grid must be True or False, got 1'):
        SimplifiedLinearAttention(8, 2, (4, 4), fixed_grid=1)


# ---------------------------------------------------------------- bad inputs
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
