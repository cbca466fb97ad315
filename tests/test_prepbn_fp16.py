"""RepBN / PRepBN under autocast (fp16, bf16): computed in float32, as CUDA autocast computes
LayerNorm.

CUDA autocast runs ``layer_norm`` in float32 but ``batch_norm`` in the input's dtype (CPU
autocast runs both in the input's dtype). RepBN is ``BN(x) + alpha * x``: its output carries
the *unnormalised* input (the residual stream, a strided conv's output), and in eval mode
(also while training with ``norm_eval=True``) it is the folded map ``scale * x + shift``
with ``scale = gamma / std + alpha`` -- in half precision the product ``scale * x``
leaves the fp16 range (or loses every significant bit in bf16) for channels of large mean
and small spread although the result is representable. So both branches of PRepBN (and
RepBN alone) compute in float32 under autocast and return float32, whatever the device.
"""
import copy

import pytest
import torch
from _tolerance import assert_rel_close, float32_tol

from mmslab.prepbn import PRepBN, RepBN

HALF = [torch.float16, torch.bfloat16]
IDS = ['fp16', 'bf16']


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial affine parameters, alpha and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 5 + 20)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.5)
    return module


def tokens(dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """(B, N, C) tokens with per-channel means ~20 and spreads ~1-3, rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(16, generator=g) * 5 + 20
    std = torch.rand(16, generator=g) * 2 + 1
    return (torch.randn(4, 49, 16, generator=g) * std + mean).to(dtype)


@pytest.mark.parametrize('dtype', HALF, ids=IDS)
def test_repbn_eval_under_autocast_does_not_overflow(dtype: torch.dtype) -> None:
    """A converged RepBN in eval mode on a channel of large mean and small spread (as in the
    unnormalised stream): ``scale * x`` = 5000 * 21 is beyond fp16's 65504 (and bf16 keeps 8
    bits of it), the true output ~5000 is not. Before the fix: inf in fp16, off by ~100s in
    bf16."""
    m = RepBN(8).eval()
    with torch.no_grad():
        m.bn.running_mean.fill_(5000.0)
        m.bn.running_var.fill_(0.0025)  # std 0.05: scale = 1 / 0.05 + alpha = 21
    g = torch.Generator().manual_seed(0)
    x = (5000.0 + 0.05 * torch.randn(2, 64, 8, generator=g)).to(dtype)
    ref = m(x.float())  # the float32 module on the same (rounded) input
    assert torch.isfinite(ref).all() and ref.abs().max() < 6000
    with torch.autocast('cpu', dtype=dtype):
        y = m(x)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert_rel_close(y, ref, float32_tol(1))  # float32 either way, elementwise (eval RepBN)


@pytest.mark.parametrize('dtype', HALF, ids=IDS)
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('lam', [0.0, 0.14, 0.5, 1.0])
def test_prepbn_under_autocast_is_the_float32_function(dtype: torch.dtype, training: bool,
                                                       lam: float) -> None:
    """Under autocast, PRepBN's output is float32 and equals the float32 module on the same
    input -- batch statistics in training, running statistics in eval, at every lam -- and
    so do the running statistics it tracks and the gradients of its parameters. Before the
    fix the LayerNorm branch (CPU) and RepBN's BatchNorm (CPU and CUDA) ran in half
    precision and eval at lam = 0 returned a half tensor."""
    p = randomised(PRepBN(16))
    p.lam = lam
    q = copy.deepcopy(p)
    p.train(training)
    q.train(training)
    x = tokens(dtype)
    with torch.autocast('cpu', dtype=dtype):
        y = p(x)
    ref = q(x.float())
    assert y.dtype == torch.float32
    # float32 in both: statistics over B * N = 196 tokens (BN) and C = 16 channels (LN)
    tokens_len = x.shape[0] * x.shape[1]
    assert_rel_close(y, ref, float32_tol(tokens_len))
    if training:
        for name, buf in p.named_buffers():
            assert_rel_close(buf, dict(q.named_buffers())[name], float32_tol(tokens_len),
                             msg=name)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    (y * weight).sum().backward()
    (ref * weight).sum().backward()
    for (name, a), b in zip(p.named_parameters(), q.parameters()):
        if b.grad is None:
            assert a.grad is None or not a.grad.any(), name
            continue
        # backward through BN: two token reductions
        assert_rel_close(a.grad, b.grad, float32_tol(tokens_len, layers=2), msg=name)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_full_precision_unchanged(dtype: torch.dtype) -> None:
    """Float32 / float64 inputs keep their dtype, with or without autocast."""
    p = randomised(PRepBN(16)).to(dtype)
    p.lam = 0.3
    x = tokens(torch.float32).to(dtype)
    for training in (True, False):
        p.train(training)
        assert p(x).dtype == dtype
        assert p.norm2(x).dtype == dtype


def test_half_module_without_autocast_stays_half() -> None:
    """A model converted with ``.half()`` (no autocast) gets half outputs (computed in
    float32 where the module is in eval mode)."""
    p = randomised(PRepBN(16)).eval()
    p.lam = 0.5
    ref = copy.deepcopy(p)(tokens(torch.float16).float())
    p.half()
    y = p(tokens(torch.float16))
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=5e-2)  # fp16 output rounding
