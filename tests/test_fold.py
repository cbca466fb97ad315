"""Folding: a refused fold changes nothing, and folded layers keep their trainability."""
import copy

import pytest
import torch
import torch.nn as nn
from _mini import mini_spec
from _tolerance import EXACT, assert_rel_close

from mmslab.models import reparameterize
from mmslab.prepbn import PRepBN
from mmslab.prepbn import (fold_affine_into_conv, fold_affine_into_conv_input,
                                 fold_affine_into_linear)

MINIS = {
    'swin': mini_spec('slab_swin', depths=[1, 1, 1, 1]),
    'pvt': mini_spec('slab_pvt'),
    'pvt_SSSS': mini_spec('pvt_prepbn'),
}


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {name: type(m) for name, m in model.named_modules()},
            {name: p.requires_grad for name, p in model.named_parameters()})


def _assert_unchanged(model: nn.Module, snapshot) -> None:
    state, types, grads = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads


@pytest.mark.parametrize('family', list(MINIS))
def test_a_refused_fold_changes_nothing(family):
    """One late PRepBN with lam = 0.5: the fold is refused before anything is folded."""
    cls, kw = MINIS[family]
    torch.manual_seed(0)
    model = cls(**kw).eval()
    norms = [m for m in model.modules() if isinstance(m, PRepBN)]
    norms[-2].lam = 0.5
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match='cannot fold a PRepBN with lam=0.5') as err:
        model.switch_to_deploy()
    assert not model.deploy
    _assert_unchanged(model, snapshot)
    assert 'nothing was folded: 1 of' in str(err.value)
    # the whole-model route: every backbone is checked first, the mode is left as it was
    wrapper = nn.Sequential(model, nn.Identity()).train()
    with pytest.raises(ValueError, match='cannot fold a PRepBN with lam=0.5'):
        reparameterize(wrapper)
    assert wrapper.training and model.training
    model.eval()
    _assert_unchanged(model, snapshot)
    # and once converged it folds, to the same function (exact: checked in float64)
    norms[-2].lam = 0.0
    model.double()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        model.switch_to_deploy()
        out = model(x)
    assert model.deploy and not any(isinstance(m, PRepBN) for m in model.modules())
    for a, b in zip(out, ref):
        assert_rel_close(a, b, EXACT)


FOLDS = {
    'linear': (fold_affine_into_linear, lambda: nn.Linear(4, 6), 4),
    'conv (output affine)': (fold_affine_into_conv, lambda: nn.Conv2d(4, 6, 2, stride=2), 6),
    'conv (input affine)': (fold_affine_into_conv_input, lambda: nn.Conv2d(4, 6, 2, stride=2),
                            4),
}


@pytest.mark.parametrize('requires_grad', [False, True])
@pytest.mark.parametrize('kind', list(FOLDS))
def test_folds_keep_requires_grad(kind, requires_grad):
    fold, make, channels = FOLDS[kind]
    layer = make().requires_grad_(requires_grad)
    new = fold(layer, torch.rand(channels) + 0.5, torch.randn(channels))
    assert new.weight.requires_grad is requires_grad
    assert new.bias.requires_grad is requires_grad


def test_frozen_stem_stays_frozen_after_folding():
    cls, kw = MINIS['swin']
    model = cls(**kw, frozen_stages=0).train()
    assert not model.patch_embed.proj.weight.requires_grad
    folded = copy.deepcopy(model).eval()
    folded.switch_to_deploy()
    assert not any(p.requires_grad for p in folded.patch_embed.parameters())
    assert all(p.requires_grad for p in folded.stages.parameters())
