"""PRepBN's lam: one source of truth (the float64 buffer) whatever sets it, and an exact
float64 whatever the module is converted to."""
import copy

import pytest
import torch
from _mini import mini_kwargs
from _tolerance import EXACT, assert_rel_close, float32_tol

from mmslab.models import SLABSwin
from mmslab.prepbn import PRepBN, set_prepbn_lam

SWIN_MINI = mini_kwargs('slab_swin', depths=[1, 1, 1, 1])


def randomised(norm: PRepBN, seed: int = 0) -> PRepBN:
    """Non-trivial LayerNorm / RepBN parameters and running statistics, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        bn = norm.norm2.bn
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return norm.eval()


ROUTES = ['float', 'tensor', 'load_state_dict', 'functional_call']


@pytest.mark.parametrize('value', [0.3, 1.0])
@pytest.mark.parametrize('route', ROUTES)
def test_lam_has_one_source_of_truth(route, value):
    """Eval computes ``lam * LN(x) + (1 - lam) * RepBN(x)`` with the lam that was set, by
    every route, and a norm that mixes in LayerNorm refuses to fold."""
    norm = randomised(PRepBN(8))
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = value * norm.norm1(x) + (1 - value) * norm.norm2(x)
        if route == 'float':
            norm.lam = value
        elif route == 'tensor':
            norm.lam = torch.tensor(value)  # a float32 tensor
        elif route == 'load_state_dict':
            norm.load_state_dict(dict(norm.state_dict(), lam=torch.tensor(value)))
        if route == 'functional_call':
            out = torch.func.functional_call(norm, {'lam': torch.tensor(value)}, (x,))
        else:
            out = norm(x)
    # float32, elementwise: the mix adds a few roundings (lam of a float32 tensor is rounded)
    assert_rel_close(out, expected, float32_tol(1))
    if route == 'functional_call':
        assert float(norm.lam) == 0.0  # the call's value was temporary
        return
    assert norm.lam.dtype == torch.float64 and float(norm.lam) == pytest.approx(value)
    assert f'lam={value:g}' in repr(norm)
    with pytest.raises(ValueError, match=f'cannot fold a PRepBN with lam={value:g}'):
        norm.affine()


def test_functional_call_on_a_backbone():
    """``torch.func.functional_call(model, {'...lam': tensor}, x)`` runs the model with that
    lam, as setting it does."""
    torch.manual_seed(0)
    model = SLABSwin(**SWIN_MINI).eval().double()  # two routes to one function: float64
    key = 'stages.0.blocks.0.norm1.lam'
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    mixed = copy.deepcopy(model)
    mixed.get_submodule(key[:-len('.lam')]).lam = 1.0
    with torch.no_grad():
        want = mixed(x)
        got = torch.func.functional_call(model, {key: torch.tensor(1.0, dtype=torch.float64)},
                                         (x,))
        plain = model(x)
    for a, b, c in zip(got, want, plain):
        assert_rel_close(a, b, EXACT)
        assert not torch.allclose(a, c)  # the lam made a difference


def test_lam_assignment_is_checked():
    norm = PRepBN(4)
    for bad, error, words in ((1.5, ValueError, r'PRepBN: lam must be in \[0, 1\], got 1.5'),
                              (-0.1, ValueError, r'lam must be in \[0, 1\], got -0.1'),
                              ('0.5', TypeError, r"PRepBN: lam must be a number in \[0, 1\], "
                                                 r"got '0.5' \(str\)"),
                              (torch.tensor(2.0), ValueError, r'lam must be in \[0, 1\], got 2.0'),
                              (torch.zeros(2), ValueError, r'a one-element tensor\), got a '
                                                           r'tensor of shape \(2,\)')):
        with pytest.raises(error, match=words):
            norm.lam = bad
    assert float(norm.lam) == 0.0  # nothing was set
    norm.lam = torch.tensor([0.25])  # one element: accepted, stored as a scalar
    assert norm.lam.shape == () and norm.lam.dtype == torch.float64


CONVERSIONS = {
    'half': lambda m: m.half(),
    'bfloat16': lambda m: m.bfloat16(),
    'to(float16)': lambda m: m.to(torch.float16),
    'to(cpu, float16)': lambda m: m.to('cpu', torch.float16),
    'float': lambda m: m.float(),
    'double': lambda m: m.double(),
}
if torch.cuda.is_available():
    CONVERSIONS['cuda'] = lambda m: m.cuda()
    CONVERSIONS['to(cuda, float16)'] = lambda m: m.to('cuda', torch.float16)


@pytest.mark.parametrize('convert', list(CONVERSIONS))
def test_lam_stays_an_exact_double(convert):
    """``.half()`` / ``.to(dtype)`` convert the weights, not lam: 0.3 stays 0.3 (float16
    would make it 0.30005); a device move applies."""
    model = SLABSwin(**SWIN_MINI)
    set_prepbn_lam(model, 0.3)
    CONVERSIONS[convert](model)
    device = model.patch_embed.proj.weight.device
    lams = [m.lam for m in model.modules() if isinstance(m, PRepBN)]
    assert lams and all(lam.dtype == torch.float64 and lam.item() == 0.3 for lam in lams)
    assert all(lam.device == device for lam in lams)
    sd = model.state_dict()
    assert sd['stages.0.blocks.0.norm1.lam'].dtype == torch.float64
    # converting back keeps the value too
    model.float()
    assert all(m.lam.item() == 0.3 for m in model.modules() if isinstance(m, PRepBN))
