"""One model, every device: the SLAB backbones against a float64 reference.

Matrix: SLABPVT ('LLLL'), PVT-PRepBN ('SSSS'), SLABSwin ('LLSS'), Swin-PRepBN ('SSSS',
window 7) x {train, eval, deploy-folded} x {float32, float64, bfloat16 / float16 autocast,
``.half()`` / ``.bfloat16()`` weights}, each case run on three inputs — {batch 1, 3} x odd
sizes x {contiguous, channels_last, non-contiguous} — that take the three grad modes
{grad, no_grad, inference_mode} in rotation (every model x form x precision x grad mode and
x layout combination once, not their full product), on every device present (CPU always,
CUDA when there is one). Where the CPU inference path applies (see
:mod:`mmslab.models.cpu_inference`), both it and the reference form are checked. Each
output is compared with the float64 reference model (same weights, same mode) by its
largest error relative to the reference's largest magnitude, with a tolerance per
precision. Plus: training under autocast + GradScaler gives finite gradients
(``torch.compile(fullgraph=True)``: tests/test_compile.py).
"""
from contextlib import nullcontext
from typing import Dict, Tuple

import _mini
import pytest
import torch
import torch.nn as nn
from _tolerance import EXACT, assert_rel_close

from mmslab.models import cpu_inference
from mmslab.prepbn import set_prepbn_lam
from mmslab.prepbn import RepBN

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
# the four mini models of tests/_mini.py; SLAB-Swin with windows (16, 8, 7, 7) rather than
# the class default (56, 28, 7, 7)
OVERRIDES = {'slab_swin': dict(window_sizes=(16, 8, 7, 7))}
MODELS = {name: _mini.mini_spec(name, **OVERRIDES.get(name, {})) for name in _mini.MODELS}
FORMS = ['train', 'eval', 'deploy']
GRAD_MODES = {'grad': nullcontext, 'no_grad': torch.no_grad,
              'inference_mode': torch.inference_mode}
# precision -> (weights dtype, autocast dtype or None, relative tolerance)
PRECISIONS = {
    'float32': (torch.float32, None, 1e-4),
    'float64': (torch.float64, None, EXACT),
    'autocast_bf16': (torch.float32, torch.bfloat16, 6e-2),
    'autocast_fp16': (torch.float32, torch.float16, 1e-2),
    'half': (torch.float16, None, 2e-2),
    'bfloat16': (torch.bfloat16, None, 2e-1),  # 8-bit mantissa; BN over 2 tokens in train
}
SIZES = [(45, 77), (37, 70)]  # odd, non-square, not multiples of the patch / windows
LAYOUTS = ['contiguous', 'channels_last', 'strided']


def random_model(name: str, form: str, dtype: torch.dtype = torch.float32,
                 device: str = 'cpu') -> nn.Module:
    """A mini backbone with random weights, BN statistics and alphas, every PRepBN at
    lam = 0.5 (both branches matter), drop path off; deploy: lam = 0, then folded in
    ``dtype`` (the fold keeps the weights' dtype)."""
    cls, kw = MODELS[name]
    torch.manual_seed(0)
    model = cls(**kw, drop_path_rate=0.0, norm_eval=False)
    model.init_weights()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RepBN):
                m.bn.running_mean.normal_(0, 0.3)
                m.bn.running_var.uniform_(0.5, 2.0)
                m.alpha.uniform_(0.5, 1.5)
    for p in model.parameters():  # position tables matter too
        if p.dim() == 3:
            nn.init.normal_(p, std=0.2)
    set_prepbn_lam(model, 0.0 if form == 'deploy' else 0.5)
    model.train(form == 'train').to(device=device, dtype=dtype)
    if form == 'deploy':
        model.switch_to_deploy()
    return model


def inputs(batch: int, hw: Tuple[int, int], layout: str, dtype: torch.dtype,
           device: str) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(batch, 3, *hw, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == 'channels_last':
        return x.contiguous(memory_format=torch.channels_last)
    if layout == 'strided':  # a non-contiguous view: every other column of a wider image
        wide = torch.zeros(batch, 3, hw[0], 2 * hw[1], dtype=dtype, device=device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


_REFERENCES: Dict[tuple, Tuple[torch.Tensor, ...]] = {}


@pytest.fixture(autouse=True)
def no_tf32():
    """float32 means float32: TF32 (on by default for cuDNN convolutions) rounds the
    patch-embedding and depthwise convs to 10-bit mantissas on Ampere+ GPUs."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def reference(name: str, form: str, batch: int, hw: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
    """Float64 outputs of the trained-form model (deploy: the unfolded one) on CPU."""
    key = (name, form, batch, hw)
    if key not in _REFERENCES:
        model = random_model(name, 'eval' if form == 'deploy' else form, torch.float64)
        if form == 'deploy':
            set_prepbn_lam(model, 0.0)
        with torch.no_grad(), cpu_inference.enabled(False):
            _REFERENCES[key] = tuple(o.cpu() for o in model(inputs(batch, hw, 'contiguous',
                                                                  torch.float64, 'cpu')))
    return _REFERENCES[key]


# (batch, size, layout): each batch size, each size and each layout at least once
VARIANTS = [(1, SIZES[0], 'contiguous'), (3, SIZES[1], 'channels_last'),
            (3, SIZES[0], 'strided')]


def grad_modes_of(form: str, precision: str):
    """The grad mode of each variant of a (form, precision) case: the three variants take
    the three grad modes, rotated per case, so that every model x form x precision x grad
    mode and every model x form x precision x layout combination runs once."""
    shift = FORMS.index(form) + list(PRECISIONS).index(precision)
    modes = list(GRAD_MODES)
    return [modes[(i + shift) % len(modes)] for i in range(len(VARIANTS))]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('precision', list(PRECISIONS))
@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('name', list(MODELS))
def test_matches_float64_reference(name, form, precision, device):
    dtype, autocast_dtype, tol = PRECISIONS[precision]
    model = random_model(name, form, dtype, device)
    for (batch, hw, layout), grad_mode in zip(VARIANTS, grad_modes_of(form, precision)):
        # where the CPU inference path's rule can hold, check both it and the reference form
        both = device == 'cpu' and grad_mode != 'grad' and form != 'train' \
            and precision in ('float32', 'float64')
        ref = reference(name, form, batch, hw)
        x = inputs(batch, hw, layout, dtype, device)
        for cpu_path in [True, False] if both else [True]:
            autocast = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype \
                else nullcontext()
            with GRAD_MODES[grad_mode](), autocast, cpu_inference.enabled(cpu_path):
                outs = model(x)
            assert len(outs) == len(ref) == 4
            for i, (out, r) in enumerate(zip(outs, ref)):
                where = f'{name}/{form}/{grad_mode}/{precision}/{device} batch {batch} {hw} ' \
                        f'{layout} cpu_path={cpu_path} output {i}'
                assert out.shape == r.shape, where
                assert out.device.type == device, where
                if autocast_dtype is None:
                    assert out.dtype == dtype, where
                assert_rel_close(out, r, tol, msg=where)


def test_every_combination_is_covered():
    """The rotation covers every form x precision x grad mode and x layout once."""
    seen_grad, seen_layout = set(), set()
    for form in FORMS:
        for precision in PRECISIONS:
            for (_, _, layout), mode in zip(VARIANTS, grad_modes_of(form, precision)):
                seen_grad.add((form, precision, mode))
                seen_layout.add((form, precision, layout))
    assert len(seen_grad) == len(FORMS) * len(PRECISIONS) * len(GRAD_MODES)
    assert len(seen_layout) == len(FORMS) * len(PRECISIONS) * len(LAYOUTS)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('amp_dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', list(MODELS))
def test_backward_finite_under_autocast_and_grad_scaler(name, amp_dtype, device):
    model = random_model(name, 'train', device=device)
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = inputs(2, SIZES[0], 'contiguous', torch.float32, device)
    for _ in range(2):
        with torch.autocast(device, dtype=amp_dtype):
            loss = sum(o.float().square().mean() for o in model(x))
        assert torch.isfinite(loss)
        opt.zero_grad()
        scaler.scale(loss).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() > 0
