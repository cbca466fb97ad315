"""The CPU inference path of the SLAB blocks: the same math as their reference ``forward``,
arranged for a few-core BLAS.

**When it runs** (:func:`applies`, checked at the top of every block's ``forward``): the
block is in eval mode, the input is a float32 / float64 CPU tensor, autograd is off
(``torch.no_grad()`` / ``torch.inference_mode()``), autocast is off for CPU, nothing is
being traced, scripted or compiled, and the path is enabled (:func:`enabled`; on by
default, ``MMSLAB_CPU_FAST_PATH=0`` in the environment or ``with enabled(False):`` turns it
off; the switch is a context variable: it holds for the thread / asyncio task that set it).
Everything else — CUDA, training, autograd, autocast, half / bfloat16 weights, ONNX
export, ``torch.compile`` — runs the reference form. The tests run both forms on the same
cases against a float64 reference.

**Why it exists** (measured on 2 cores, 800x1344, ``tools/benchmark.py``; see README):
the reference form is launch-friendly on a GPU (heads batched as ``(B, h, N, d)``), but on
a CPU every fresh large tensor is page-faulted in and every transpose is a pass over
memory. Here:

* SLA keeps q, k, v token-major ``(B, N, C)``; each head's matmuls run on strided column
  slices (no head-major copies), q and k are activated in place, the normaliser comes from
  the numerator's matmul (``q @ [k^T v | k^T 1]``), and the depthwise conv runs
  channels-last over all heads and is the buffer the attention is added into;
* the output projection and fc2 accumulate into ``x + bias`` (BLAS ``beta = 1``): the
  residual add costs no pass over the tokens;
* the MLP runs over chunks of tokens, so its ``mlp_ratio``-times wider hidden layer is a
  recycled temporary instead of a fresh full-size tensor;
* Swin's pad + roll + partition (and the inverse) are one cached row gather each
  (:func:`~.windows.window_gather_index`), of the block's input tokens (C channels, not
  the 3C of q, k, v; the projection then writes the windows); SLA's windows go through
  in chunks like the MLP's tokens, and the window softmax runs in place.

The blocks here use only the attention interface (:class:`~.attention.TokenMixer`):
``project``, ``mix_inference`` (SLA's is :func:`sla_mix`, the window attention's
:func:`window_softmax_mix`, the others' their ``mix``), ``proj``.
"""
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_bool
from .windows import batched_index, window_gather_index

HW = Tuple[int, int]

#: on unless ``MMSLAB_CPU_FAST_PATH=0``: the value of every thread / task that did not set it
_ENABLED: ContextVar[bool] = ContextVar(
    'mmslab_cpu_fast_path', default=os.environ.get('MMSLAB_CPU_FAST_PATH', '1') != '0')


@contextmanager
def enabled(flag: bool) -> Iterator[None]:
    """``with enabled(False):`` runs the reference form everywhere (and ``True`` the
    CPU path wherever :func:`applies`), in the current thread / asyncio task only (a
    context variable: other threads keep their own setting)."""
    token = _ENABLED.set(check_bool('cpu_inference.enabled', 'flag', flag))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def is_enabled() -> bool:
    """Whether the CPU inference path is switched on in the current thread / task."""
    return _ENABLED.get()


def applies(x: torch.Tensor, module: nn.Module) -> bool:
    """The explicit rule: the CPU inference path runs ``module`` on ``x`` iff this holds."""
    # compiling / tracing / scripting first: the rest is never looked at while tracing
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.jit.is_scripting() and _ENABLED.get() and not module.training
            and x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64)
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled('cpu'))


# ------------------------------------------------------------------------ building blocks
def linear_residual(x: torch.Tensor, y: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``x + linear(y)``: ``x + bias`` is written first and the GEMM accumulates into it."""
    if linear.bias is None:
        return x + linear(y)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, whatever x is
    torch.add(x, linear.bias.to(x.dtype), out=out)
    out.view(-1, out.shape[-1]).addmm_(y.reshape(-1, y.shape[-1]), linear.weight.t())
    return out


#: hidden-layer elements per token chunk of the MLP (16 MB in fp32: below glibc's 32 MB
#: mmap ceiling, so malloc recycles the chunk instead of mapping fresh pages each time)
MLP_CHUNK = 1 << 22


def mlp_residual(x: torch.Tensor, norm: nn.Module, mlp: nn.Module) -> torch.Tensor:
    """``x + mlp(norm(x))`` for the blocks' ``Mlp`` (fc1 -> GELU -> fc2) over chunks of tokens
    (``MLP_CHUNK`` hidden elements each, thousands of rows: GEMMs at full speed); GELU in
    place; fc2 accumulates into ``x + bias``. ``norm`` is token-wise (eval PRepBN)."""
    fc1, fc2 = mlp.fc1, mlp.fc2
    if type(mlp.act) is not nn.GELU or mlp.act.approximate != 'none' or fc2.bias is None:
        return x + mlp(norm(x))
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    rows = max(64, MLP_CHUNK // fc1.out_features)
    w2 = fc2.weight.t()
    for i in range(0, x2.shape[0], rows):
        xi, oi = x2[i:i + rows], out[i:i + rows]
        h = torch.ops.aten.gelu_(fc1(norm(xi)))
        torch.add(xi, fc2.bias, out=oi)  # residual + bias, then the GEMM accumulates
        oi.addmm_(mlp.norm(h), w2)
    return out.view(x.shape)


def sla_mix(attn: nn.Module, qkv: torch.Tensor, hw: HW) -> torch.Tensor:
    """:meth:`SimplifiedLinearAttention.mix` for a float32/64 CPU ``qkv`` that it may
    overwrite: token-major heads, in-place activations, the depthwise conv as the output
    buffer (see the module docstring)."""
    b, n, _ = qkv.shape
    c, d = attn.embed_dims, attn.head_dims
    if n != hw[0] * hw[1]:
        raise ValueError(f'{n} tokens do not form a {hw[0]}x{hw[1]} grid')
    pos = attn.position_table(hw).to(qkv.dtype)
    v = qkv[..., 2 * c:]
    out = _dwc_token_major(attn, v, hw)                                   # (B, N, C)
    q, k = qkv[..., :c].relu_(), qkv[..., c:2 * c].add_(pos).relu_()
    ksum = k.sum(dim=1).unsqueeze(-1)                                     # (B, C, 1)
    for i in range(0, c, d):
        qh, kh, vh = q[..., i:i + d], k[..., i:i + d], v[..., i:i + d]    # (B, N, d)
        num_den = qh @ torch.cat([kh.transpose(1, 2) @ vh, ksum[:, i:i + d]], -1)
        out[..., i:i + d].addcdiv_(num_den[..., :d], num_den[..., d:] + 1e-6)
    return out


def _dwc_token_major(attn: nn.Module, v: torch.Tensor, hw: HW) -> torch.Tensor:
    """The shared depthwise conv of every head's v: ``(B, N, C)`` (any row stride) -> a new
    contiguous ``(B, N, C)``; channels-last, one grouped conv (filters repeated per head)."""
    b, n, c = v.shape
    heads = attn.num_heads
    vmap = v.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
    vmap = vmap.contiguous(memory_format=torch.channels_last)
    weight, bias = attn.dwc.weight.to(v.dtype), attn.dwc.bias.to(v.dtype)
    if heads > 1:
        weight, bias = weight.repeat(heads, 1, 1, 1), bias.repeat(heads)
    out = F.conv2d(vmap, weight, bias, padding=attn.dwc.padding, groups=c)
    return out.permute(0, 2, 3, 1).reshape(b, n, c)


def window_softmax_mix(attn: nn.Module, qkv: torch.Tensor,
                       mask: Optional[torch.Tensor]) -> torch.Tensor:
    """:meth:`WindowAttention.mix` as plain ``softmax(q k^T / sqrt(d) + bias) v``, in place
    (torch's CPU SDPA adds an all-masked-row check that costs as much as the softmax)."""
    bw, n, _ = qkv.shape
    heads, d = attn.num_heads, attn.embed_dims // attn.num_heads
    q, k, v = qkv.view(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias().to(qkv.dtype)
    if mask is not None:  # (one mask per window of every image)
        bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(qkv.dtype)
    scores = (q * d ** -0.5) @ k.transpose(-2, -1)
    out = scores.add_(bias).softmax(dim=-1) @ v
    return out.reshape(bw, heads, n, d).transpose(1, 2).reshape(bw, n, attn.embed_dims)


# ------------------------------------------------------------------------ blocks
def pvt_block(block: nn.Module, x: torch.Tensor, hw: HW) -> torch.Tensor:
    """:meth:`SLABPVTBlock.forward` (eval, no autograd, float32/64 CPU)."""
    attn = block.attn
    mixed = attn.mix_inference(attn.project(block.norm1(x)), hw)
    x = linear_residual(x, mixed, attn.proj)
    return mlp_residual(x, block.norm2, block.mlp)


def swin_block(block: nn.Module, x: torch.Tensor, hw: HW,
               mask: Optional[torch.Tensor]) -> torch.Tensor:
    """:meth:`SLABSwinBlock.forward` (eval, no autograd, float32/64 CPU).

    The tokens are gathered into windows before the projection (a third of the bytes of
    gathering q, k, v, and the projection writes the windows; the padded rows are
    projected and then overwritten with the projection of a zero normalised token: 12 %
    more rows at 800x1344, 72 % in SLAB-Swin-T's stages 1-2 at 512x512, where projecting
    only the map's rows measured no gain, docs/benchmark.md). Where the attention reads no
    shift mask (SLA), the windows go through in chunks of ``MLP_CHUNK`` q/k/v elements, as
    the MLP does: SLAB-Swin-T's first stages would otherwise map a fresh 87 / 43 MB q, k,
    v tensor per block at 800x1344."""
    b, n, c = x.shape
    ws, s = block.window_size, block.shift_size
    gather, padded, inverse = window_gather_index(hw[0], hw[1], ws, s, x.device)
    index, rows = batched_index(gather, b, n), ws * ws
    total = index.numel()                                                 # B*nW*ws*ws
    if padded is not None:
        padded = padded.repeat(b)
        pad = block.pad_value()
        pad = 0 if pad is None else pad.to(x.dtype)
    step = total if block.attn.uses_shift_mask else \
        max(1, MLP_CHUNK // (3 * c * rows)) * rows                        # whole windows
    tokens, out = x.reshape(b * n, c), None
    for lo in range(0, total, step):
        hi = min(total, lo + step)
        windows = block.attn.project(block.norm1(tokens.index_select(0, index[lo:hi])))
        if padded is not None:
            windows[padded[lo:hi]] = pad
        mixed = block.attn.mix_inference(windows.view(-1, rows, 3 * c), (ws, ws),
                                         mask if s else None).reshape(-1, c)
        if hi - lo == total:
            out = mixed
        else:
            if out is None:
                out = x.new_empty(total, c)
            out[lo:hi] = mixed
    out = out.index_select(0, batched_index(inverse, b, gather.numel()))
    x = linear_residual(x, out.view(b, n, c), block.attn.proj)
    return mlp_residual(x, block.norm2, block.mlp)
