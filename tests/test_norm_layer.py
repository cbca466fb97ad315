"""PRepBN / RepBN as norm layers of any OpenMMLab module: mmcv's and mmpretrain's
``build_norm_layer`` (``norm_cfg=dict(type='PRepBN')``), every channels-last layout, and
inside stock mmdet / mmseg / mmpretrain transformers, where ``lam = 1`` computes exactly
what the LayerNorm model computes and ``lam = 0`` folds exactly."""
import pytest
import torch
import torch.nn as nn
from _tolerance import EXACT, assert_rel_close
from mmcv.cnn import build_norm_layer

from _stock import KINDS, run_tokens_model, tokens_input, tokens_model

from mmslab.models import reparameterize
from mmslab.prepbn import PRepBN, RepBN, set_prepbn_lam


def test_build_norm_layer_names_eps_and_requires_grad():
    name, norm = build_norm_layer(dict(type='PRepBN', eps=1e-6), 64)
    assert name == 'ln' and isinstance(norm, PRepBN)  # named as the LayerNorm it replaces
    assert norm.norm1.eps == 1e-6 and norm.norm2.bn.eps == 1e-5  # eps: the LayerNorm's
    _, default = build_norm_layer(dict(type='PRepBN'), 8)
    _, ln = build_norm_layer(dict(type='LN'), 8)
    assert default.norm1.eps == ln.eps  # the same default as dict(type='LN')
    name, frozen = build_norm_layer(dict(type='PRepBN', requires_grad=False, bn_eps=1e-3,
                                         momentum=0.01), 16, postfix=2)
    assert name == 'ln2' and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.norm2.bn.eps == 1e-3 and frozen.norm2.bn.momentum == 0.01
    name, rep = build_norm_layer(dict(type='RepBN', eps=1e-4), 32, postfix=1)
    assert name == 'repbn1' and isinstance(rep, RepBN) and rep.bn.eps == 1e-4


def test_mmpretrain_build_norm_layer():
    """mmpretrain's own ``build_norm_layer`` (module only; type looked up in mmpretrain's
    registry, whose parent holds PRepBN; ``eps`` defaulted to 1e-5 and passed on)."""
    from mmpretrain.models.utils import build_norm_layer as pretrain_build_norm_layer
    norm = pretrain_build_norm_layer(dict(type='PRepBN', eps=1e-6), 64)
    assert isinstance(norm, PRepBN) and norm.channels == 64
    assert norm.norm1.eps == 1e-6 and norm.norm2.bn.eps == 1e-5
    default = pretrain_build_norm_layer(dict(type='PRepBN'), 8)
    assert default.norm1.eps == pretrain_build_norm_layer(dict(type='LN'), 8).eps
    frozen = pretrain_build_norm_layer(dict(type='PRepBN', requires_grad=False, bn_eps=1e-3),
                                       16)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen.norm2.bn.eps == 1e-3
    rep = pretrain_build_norm_layer(dict(type='RepBN', eps=1e-4), 32)
    assert isinstance(rep, RepBN) and rep.bn.eps == 1e-4
    folded = pretrain_build_norm_layer(dict(type='PRepBN', eps=1e-6, deploy=True), 8)
    assert folded.deploy


def test_bad_arguments_and_layouts_are_named():
    with pytest.raises(ValueError, match='eps and ln_eps both name the LayerNorm eps'):
        PRepBN(8, ln_eps=1e-6, eps=1e-5)
    for norm in (PRepBN(8), RepBN(8)):
        with pytest.raises(ValueError, match=r'got a tensor of shape \(2, 8, 5\): expected '
                                             r'channels last, \(\.\.\., 8\)'):
            norm(torch.randn(2, 8, 5))  # channels first
        with pytest.raises(ValueError, match='expected channels last'):
            norm(torch.randn(8))


@pytest.mark.parametrize('shape', [(2, 7, 6), (7, 2, 6), (5, 6)], ids=['BNC', 'NBC', 'BC'])
def test_every_channels_last_layout(shape):
    """lam = 1: the LayerNorm over C; lam = 0: BatchNorm over every position + alpha * x;
    in train and eval, float64."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    norm = PRepBN(6, eps=1e-6).double()
    with torch.no_grad():
        norm.norm1.weight.uniform_(0.5, 1.5)
        norm.norm2.alpha.fill_(0.7)
    ln = nn.LayerNorm(6, eps=1e-6).double()
    ln.load_state_dict(norm.norm1.state_dict())
    rows = x.reshape(-1, 6)
    for training in (True, False):
        norm.train(training)
        norm.lam = 1.0
        assert_rel_close(norm(x), ln(x), EXACT)
        norm.lam = 0.0
        bn = nn.functional.batch_norm(rows, None, None, norm.norm2.bn.weight,
                                      norm.norm2.bn.bias, True, 0.0, 1e-5) if training else \
            (rows - norm.norm2.bn.running_mean) / (norm.norm2.bn.running_var + 1e-5).sqrt()
        assert_rel_close(norm(x), bn.view(shape) + 0.7 * x, EXACT)


@pytest.mark.parametrize('kind', KINDS)
def test_builds_inside_stock_modules_and_equals_layernorm_at_lam_1(kind):
    """``norm_cfg=dict(type='PRepBN', eps=1e-6)`` in place of ``dict(type='LN', eps=1e-6)``:
    every norm the module builds is a PRepBN; the LayerNorm model's state dict loads into
    it strictly (LN branch, lam = 1), and it then computes what the LN module computes
    (float64); it trains (finite gradients) at lam = 0.5."""
    torch.manual_seed(0)
    ln_model = tokens_model(kind, dict(type='LN', eps=1e-6)).double()
    ln_model.eval()  # (mmdet's Swin.train() returns None)
    with torch.no_grad():
        for m in ln_model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    model = tokens_model(kind, dict(type='PRepBN', eps=1e-6)).double()
    model.eval()
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in ln_model.modules())
    prepbns = {n: m for n, m in model.named_modules() if isinstance(m, PRepBN)}
    assert n_ln > 0 and len(prepbns) == n_ln
    # the key map: the LayerNorm state dict loads strictly; LN weights to the LN branch
    # (norm1) of the PRepBN of the same name, lam = 1, the RepBN branch its BatchNorm twin
    # (the LN's affine, alpha = 0, running statistics as initialised)
    model.load_state_dict(ln_model.state_dict(), strict=True)
    for name, m in prepbns.items():
        ln = ln_model.get_submodule(name)
        assert float(m.lam) == 1.0 and torch.equal(m.norm1.weight, ln.weight)
        assert torch.equal(m.norm2.bn.weight, ln.weight) and torch.equal(m.norm2.bn.bias, ln.bias)
        assert float(m.norm2.alpha) == 0.0 and torch.equal(m.norm2.bn.running_var,
                                                           torch.ones_like(ln.weight))
    assert set_prepbn_lam(model, 1.0) == n_ln
    x = tokens_input(kind)
    with torch.no_grad():
        for a, b in zip(run_tokens_model(kind, model, x), run_tokens_model(kind, ln_model, x)):
            assert_rel_close(a, b, EXACT)
    set_prepbn_lam(model, 0.5)
    model.train()
    model.float()
    outs = run_tokens_model(kind, model, x.float())
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(p.norm2.bn.running_mean).all() for p in prepbns.values())


@pytest.mark.parametrize('kind', KINDS)
def test_converged_stock_modules_fold_exactly(kind):
    """A module built with ``norm_cfg=dict(type='PRepBN', eps=1e-6)``, its RepBN statistics
    trained, at ``lam = 0``: ``reparameterize`` turns every norm into its affine map, and
    the folded module computes what the unfolded one computed (float64)."""
    torch.manual_seed(0)
    model = tokens_model(kind, dict(type='PRepBN', eps=1e-6)).double()
    prepbns = [m for m in model.modules() if isinstance(m, PRepBN)]
    with torch.no_grad():
        for m in prepbns:
            m.norm2.alpha.fill_(0.5)
            m.norm2.bn.weight.uniform_(0.5, 1.5)
            m.norm2.bn.bias.normal_(0, 0.1)
    set_prepbn_lam(model, 0.0)
    model.train()
    x = tokens_input(kind)
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their init
            run_tokens_model(kind, model, x * 2 + 0.5)
    model.eval()
    with torch.no_grad():
        before = run_tokens_model(kind, model, x)
        assert reparameterize(model) == len(prepbns) > 0
        assert all(m.deploy for m in prepbns)
        for a, b in zip(run_tokens_model(kind, model, x), before):
            assert_rel_close(a, b, EXACT)
