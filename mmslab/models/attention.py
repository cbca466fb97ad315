"""Attention layers of the SLAB backbones (docs/method.md, "SLA", "Windows").

* :class:`SimplifiedLinearAttention` (SLA): ReLU kernel, a learnable positional encoding
  added to k before the ReLU, linear-cost normalised attention in at least float32, a
  depthwise 5x5 conv on v shared by all heads, output projection.
* :class:`WindowAttention`: Swin's window softmax attention with relative position bias.
* :class:`SpatialReductionAttention`: PVT v1's softmax attention with a strided ``sr``
  conv and a PRepBN on the reduced keys (the PVT-PRepBN variant).

All three have one interface (:class:`TokenMixer`), so that the blocks and the CPU
inference path never look at which attention they hold:

* ``project(x)``: the per-token part (the qkv projection), which a Swin block runs before
  it pads and partitions: padded tokens then get exactly the value a zero normalised token
  gets, ``pad_qkv()``, which stays true after the norm is folded into the projection;
* ``mix(qkv, hw, mask=None)``: the mixing of tokens, before the output projection;
* ``mix_inference(qkv, hw, mask=None)``: the same for the CPU inference path
  (:mod:`.cpu_inference`), which may overwrite ``qkv``;
* ``forward(x, hw, mask=None) = proj_drop(proj(mix(project(x), hw, mask)))``;
* ``fold_input_affine(scale, shift)``: fold a per-channel affine map of the input (a
  converged norm before the attention) into the layers that read the input.

Each is written once, in the reference form that is right on every device and dtype, with
and without autograd and under autocast, and that traces / compiles with dynamic shapes:
heads are batched as ``(B, heads, N, head_dim)`` tensors. (The CPU inference path is a
second, measured form of the same math for one explicit case.)
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..validation import check_bool, check_choice, check_float, check_int, check_size_2d
from . import cpu_inference
from ..prepbn import PRepBN, fold_affine_into_conv_input, fold_affine_into_linear
from .pos_embed import resize_pos_embed
from .shapes import symbolic_sizes

HW = Tuple[int, int]


def _core_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (half and bfloat16 are upcast, float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


def _check_heads(owner: str, embed_dims: int, num_heads: int) -> None:
    check_int(owner, 'embed_dims', embed_dims, min=1)
    check_int(owner, 'num_heads', num_heads, min=1)
    if embed_dims % num_heads:
        raise ValueError(f'{owner}: embed_dims {embed_dims} is not divisible by num_heads '
                         f'{num_heads}')


class TokenMixer(nn.Module):
    """The interface of the SLAB attention layers (see the module docstring).

    Subclasses define ``proj`` (the output Linear), ``proj_drop``, :meth:`project`,
    :meth:`mix`, :meth:`pad_qkv` and :meth:`fold_input_affine`; :meth:`mix_inference`
    defaults to :meth:`mix`.
    """

    proj: nn.Linear
    proj_drop: nn.Dropout
    #: whether :meth:`mix` reads Swin's shift mask (a stage builds it only then)
    uses_shift_mask: bool = False

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``(B, N, C)`` -> what :meth:`mix` takes, token by token."""
        raise NotImplementedError

    def mix(self, qkv: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected tokens of a ``hw`` grid (or of windows of that size) -> ``(B, N, C)``
        attention output before ``proj``; ``mask``: Swin's additive shift mask
        ``(B*nW, N, N)`` (one per window of every image) or None."""
        raise NotImplementedError

    def mix_inference(self, qkv: torch.Tensor, hw: HW,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`mix` for the CPU inference path (eval, no autograd, float32/64 CPU); it
        may overwrite ``qkv``."""
        return self.mix(qkv, hw, mask)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        """What :meth:`project` gives for a zero (normalised) token: the value of padded
        tokens (None: zeros)."""
        raise NotImplementedError

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the layer compute on ``x`` what it computed on ``scale * x + shift``
        (per channel), exactly: the fold of the norm before it."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.proj_drop(self.proj(self.mix(self.project(x), hw, mask)))


class SimplifiedLinearAttention(TokenMixer):
    """Simplified linear attention over a ``H x W`` token grid (a whole map in PVT, one
    window in Swin). ``mix`` ignores ``mask``: SLA has no shift mask (as the release).

    Args:
        embed_dims: channels C.
        num_heads: heads; head_dim = C // num_heads.
        pos_grid: ``(H, W)`` grid of the positional encoding P (``(1, H*W, C)``). For any
            other token grid P is resized bilinearly at run time.
        fixed_grid: the token grid is always ``pos_grid`` (Swin's windows): P is used as
            it is, also where sizes are symbolic (an exported graph then holds P itself,
            not a resize of it to the same grid), and another grid is an error.
        qkv_layout: ``'qkv'`` (Swin: one Linear(C, 3C) giving [q | k | v]) or ``'q_kv'``
            (PVT: ``q`` Linear(C, C) and ``kv`` Linear(C, 2C) giving [k | v]).
        kernel_size: of the depthwise conv on v (5 in the release).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 pos_grid: HW,
                 qkv_layout: str = 'qkv',
                 qkv_bias: bool = True,
                 proj_drop: float = 0.,
                 kernel_size: int = 5,
                 fixed_grid: bool = False) -> None:
        super().__init__()
        name = 'SimplifiedLinearAttention'
        _check_heads(name, embed_dims, num_heads)
        pos_grid = check_size_2d(name, 'pos_grid', pos_grid, min=1)
        check_choice(name, 'qkv_layout', qkv_layout, ('qkv', 'q_kv'))
        check_bool(name, 'qkv_bias', qkv_bias)
        check_float(name, 'proj_drop', proj_drop, min=0, max=1)
        check_int(name, 'kernel_size', kernel_size, min=1)
        check_bool(name, 'fixed_grid', fixed_grid)
        if kernel_size % 2 == 0:
            raise ValueError(f'{name}: kernel_size must be odd (the depthwise conv on v pads '
                             f'kernel_size // 2 and must keep the token grid), got {kernel_size}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.pos_grid = tuple(pos_grid)
        self.fixed_grid = fixed_grid
        self.qkv_layout = qkv_layout
        if qkv_layout == 'qkv':
            self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(self.head_dims, self.head_dims, kernel_size,
                             padding=kernel_size // 2, groups=self.head_dims)
        self.positional_encoding = nn.Parameter(
            torch.zeros(1, self.pos_grid[0] * self.pos_grid[1], embed_dims))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token projection ``(B, N, C) -> (B, N, 3C)`` laid out as [q | k | v]."""
        if self.qkv_layout == 'qkv':
            return self.qkv(x)
        # One GEMM with the stacked weights writes [q | k | v] directly (no output concat).
        q, kv = self.q, self.kv
        bias = None
        if q.bias is not None or kv.bias is not None:
            bias = torch.cat([q.bias if q.bias is not None else q.weight.new_zeros(q.out_features),
                              kv.bias if kv.bias is not None else kv.weight.new_zeros(
                                  kv.out_features)])
        return F.linear(x, torch.cat([q.weight, kv.weight]), bias)

    def mix(self, qkv: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention over projected tokens ``(B, H*W, 3C)``, before the output projection.

        ``out = q (k^T v) / (q . sum_j k_j + 1e-6) + DWC(v)`` per head, computed in at
        least float32 with autocast off (as the release); the result has ``qkv``'s dtype.
        ``mask`` is ignored.
        """
        b, n, _ = qkv.shape
        if not symbolic_sizes() and n != hw[0] * hw[1]:
            raise ValueError(f'{n} tokens do not form a {hw[0]}x{hw[1]} grid')
        heads, d = self.num_heads, self.head_dims
        pos = self.position_table(hw)
        in_dtype, dtype = qkv.dtype, _core_dtype(qkv.dtype)
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            q, k, v = qkv.to(dtype).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            q = F.relu(q)                                                   # (B, h, N, d)
            k = F.relu(k + pos.to(dtype).reshape(1, n, heads, d).transpose(1, 2))
            num = q @ (k.transpose(-2, -1) @ v)                             # q (k^T v)
            den = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)          # (B, h, N, 1)
            out = num / (den + 1e-6) + self._dwc(v, hw)
            out = out.transpose(1, 2).reshape(b, n, heads * d)
        return out.to(in_dtype)

    def position_table(self, hw: HW) -> torch.Tensor:
        """P for a ``hw`` token grid: resized to it, or as it is where the grid is fixed."""
        if not self.fixed_grid:
            return resize_pos_embed(self.positional_encoding, self.pos_grid, hw)
        if not symbolic_sizes() and tuple(hw) != self.pos_grid:
            raise ValueError(f'SimplifiedLinearAttention(fixed_grid=True) takes '
                             f'{self.pos_grid[0]}x{self.pos_grid[1]} grids, got {hw[0]}x{hw[1]}')
        return self.positional_encoding

    def mix_inference(self, qkv: torch.Tensor, hw: HW,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:func:`~.cpu_inference.sla_mix` (token-major heads, in place)."""
        return cpu_inference.sla_mix(self, qkv, hw)

    def _dwc(self, v: torch.Tensor, hw: HW) -> torch.Tensor:
        """The depthwise conv shared by all heads: ``(B, h, N, d)`` -> ``(B, h, N, d)``
        (heads folded into the batch: one grouped conv)."""
        b, heads, n, d = v.shape
        vmap = v.transpose(-2, -1).reshape(b * heads, d, hw[0], hw[1])
        out = F.conv2d(vmap, self.dwc.weight.to(v.dtype), self.dwc.bias.to(v.dtype),
                       padding=self.dwc.padding, groups=d)
        return out.reshape(b, heads, d, n).transpose(-2, -1)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        if self.qkv_layout == 'qkv':
            return self.qkv.bias
        if self.q.bias is None:
            return None
        return torch.cat([self.q.bias, self.kv.bias])

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        if self.qkv_layout == 'qkv':
            self.qkv = fold_affine_into_linear(self.qkv, scale, shift)
        else:
            self.q = fold_affine_into_linear(self.q, scale, shift)
            self.kv = fold_affine_into_linear(self.kv, scale, shift)


class WindowAttention(TokenMixer):
    """Swin window softmax attention with relative position bias.

    ``mix`` takes projected windows ``(B*nW, ws*ws, 3C)``, their grid ``hw = (ws, ws)``
    (checked only) and an optional additive shift mask ``(B*nW, ws*ws, ws*ws)`` (0 / -100
    as in Swin).
    """

    uses_shift_mask = True

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        name = 'WindowAttention'
        _check_heads(name, embed_dims, num_heads)
        check_int(name, 'window_size', window_size, min=1)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = check_float(name, 'attn_drop', attn_drop, min=0, max=1)
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * ws - 1) * (2 * ws - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws),
                                            indexing='ij')).flatten(1)          # (2, ws*ws)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer('relative_position_index', rel[..., 0] * (2 * ws - 1) + rel[..., 1],
                             persistent=False)
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token projection ``(..., C) -> (..., 3C)`` laid out as [q | k | v]."""
        return self.qkv(x)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        return self.qkv.bias

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.qkv = fold_affine_into_linear(self.qkv, scale, shift)

    def relative_position_bias(self) -> torch.Tensor:
        """The ``(heads, ws*ws, ws*ws)`` additive bias of every window."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def _check_windows(self, n: int, hw: HW) -> None:
        ws = self.window_size
        if not symbolic_sizes() and (tuple(hw) != (ws, ws) or n != ws * ws):
            raise ValueError(f'WindowAttention(window_size={ws}) got {n} tokens of a '
                             f'{hw[0]}x{hw[1]} grid: expected windows of {ws}x{ws} tokens')

    def mix(self, qkv: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention over projected windows ``(B*nW, ws*ws, 3C)``, before ``proj``."""
        bw, n, _ = qkv.shape
        self._check_windows(n, hw)
        heads, d = self.num_heads, self.embed_dims // self.num_heads
        q, k, v = qkv.reshape(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW,h,N,d)
        attn_mask = self.relative_position_bias().to(qkv.dtype)               # (h, N, N)
        if mask is not None:
            attn_mask = attn_mask.unsqueeze(0) + mask.unsqueeze(1).to(qkv.dtype)  # (B*nW,h,N,N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.)
        return out.transpose(1, 2).reshape(bw, n, self.embed_dims)

    def mix_inference(self, qkv: torch.Tensor, hw: HW,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:func:`~.cpu_inference.window_softmax_mix` (plain softmax, in place)."""
        self._check_windows(qkv.shape[1], hw)
        return cpu_inference.window_softmax_mix(self, qkv, mask)


class SpatialReductionAttention(TokenMixer):
    """PVT v1 softmax attention with spatial reduction (``sr`` conv + PRepBN ``norm``).

    Its keys and values come from the spatially reduced *map* of the normalised tokens, so
    nothing per-token runs before the mixing: :meth:`project` returns its input unchanged
    (and :meth:`pad_qkv` None, a zero token), :meth:`mix` computes q, the reduction, k, v
    and the attention; ``mask`` is ignored.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 sr_ratio: int = 1,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 ln_eps: float = 1e-6,
                 deploy: bool = False) -> None:
        super().__init__()
        name = 'SpatialReductionAttention'
        _check_heads(name, embed_dims, num_heads)
        check_int(name, 'sr_ratio', sr_ratio, min=1)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = check_float(name, 'attn_drop', attn_drop, min=0, max=1)
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias or deploy)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, stride=sr_ratio)
            self.norm = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=ln_eps)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself (see the class docstring)."""
        return x

    def pad_qkv(self) -> Optional[torch.Tensor]:
        return None

    def mix(self, qkv: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised tokens ``(B, H*W, C)`` (what :meth:`project` returns) -> attention
        output before ``proj``."""
        x = qkv
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(x).view(b, n, heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(b, c, *hw)
            x = self.norm(self.sr(x).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        return out.transpose(1, 2).reshape(b, n, c)

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Into ``q`` and, with a spatial reduction, ``sr`` (else ``kv``)."""
        self.q = fold_affine_into_linear(self.q, scale, shift)
        if self.sr_ratio > 1:
            self.sr = fold_affine_into_conv_input(self.sr, scale, shift)
        else:
            self.kv = fold_affine_into_linear(self.kv, scale, shift)

    def switch_to_deploy(self) -> None:
        """Fold the reduced keys' PRepBN into ``kv``."""
        if self.sr_ratio > 1 and isinstance(self.norm, PRepBN):
            self.kv = fold_affine_into_linear(self.kv, *self.norm.affine())
            self.norm = nn.Identity()
