"""Attention layers of the SLAB backbones (SLAB.md section 2).

* :class:`SimplifiedLinearAttention` (SLA): ReLU kernel, a learnable positional encoding
  added to k before the ReLU, linear-cost normalised attention in at least float32, a
  depthwise 5x5 conv on v shared by all heads, output projection.
* :class:`WindowAttention`: Swin's window softmax attention with relative position bias.
* :class:`SpatialReductionAttention`: PVT v1's softmax attention with a strided ``sr``
  conv and a PRepBN on the reduced keys (the PVT-PRepBN variant).

The window attentions split ``project`` (the per-token qkv Linear) from ``mix`` (the
mixing of tokens), so that a Swin block can project before it pads and partitions: the
padded tokens then get exactly the value a zero normalised token gets, ``pad_qkv()``,
which stays true after the norm is folded into the projection (re-parameterization).
``mix`` / ``mix_tokens`` stop before the output projection ``proj``: the blocks apply it
after un-partitioning (so it never runs on padded tokens) and fuse it with the residual
add (``embed.linear_residual``); ``forward`` of SLA and of the spatial-reduction
attention is the complete attention of a token map.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import PRepBN, fold_affine_into_linear

HW = Tuple[int, int]


def resize_pos_embed(pos: torch.Tensor, src_hw: HW, dst_hw: HW) -> torch.Tensor:
    """Resize a ``(1, H*W, C)`` position table from grid ``src_hw`` to ``dst_hw``
    (bilinear over the 2-D grid, align_corners=False, as mmdet's PVT does)."""
    if tuple(src_hw) == tuple(dst_hw):
        return pos
    if pos.shape[1] != src_hw[0] * src_hw[1]:
        raise ValueError(f'position table of {pos.shape[1]} entries does not match its '
                         f'grid {src_hw[0]}x{src_hw[1]}')
    c = pos.shape[-1]
    # channels-last in and out: the result is a contiguous token-major (1, H*W, C) table
    grid = pos.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.contiguous(memory_format=torch.channels_last), size=tuple(dst_hw),
                         mode='bilinear', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], c)


def _core_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (half and bfloat16 are upcast, float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


class SimplifiedLinearAttention(nn.Module):
    """Simplified linear attention over a ``H x W`` token grid.

    Args:
        embed_dims: channels C.
        num_heads: heads; head_dim = C // num_heads.
        pos_grid: ``(H, W)`` grid of the positional encoding P (``(1, H*W, C)``). For any
            other token grid P is resized bilinearly at run time.
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
                 kernel_size: int = 5) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        if qkv_layout not in ('qkv', 'q_kv'):
            raise ValueError(f"qkv_layout must be 'qkv' or 'q_kv', got {qkv_layout!r}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.pos_grid = tuple(pos_grid)
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

    def mix_tokens(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Normalised tokens ``(B, H*W, C)`` -> attention output before ``proj``."""
        return self.mix(self.project(x), hw)

    def mix(self, qkv: torch.Tensor, hw: HW) -> torch.Tensor:
        """Attention over projected tokens ``(B, H*W, 3C)`` without the output projection
        (the blocks fuse ``proj`` with their residual add, see ``linear_residual``).
        Without autograd, q and k are activated in place in ``qkv`` (which is consumed).

        Layout: q, k, v stay token-major ``(B, N, C)``; each head's matmuls run on strided
        ``(B, N, d)`` column slices (BLAS takes them as they are, no head-major copies). The
        depthwise conv runs channels-last over all heads at once (its ``d`` filters
        repeated per head) and writes the ``(B, N, C)`` result the attention is added into,
        so the output reaches ``proj`` without a transpose. The normaliser comes from the
        numerator's matmul: ``q @ [k^T v | k^T 1]``.
        """
        b, n, _ = qkv.shape
        h, w = hw
        if n != h * w:
            raise ValueError(f'{n} tokens do not form a {h}x{w} grid')
        c, d = self.embed_dims, self.head_dims
        pos = resize_pos_embed(self.positional_encoding, self.pos_grid, hw)
        in_dtype, dtype = qkv.dtype, _core_dtype(qkv.dtype)
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            qkv = qkv.to(dtype)
            v = qkv[..., 2 * c:]
            out = self._dwc(v, hw)                                        # (B, N, C)
            q, k = qkv[..., :c], qkv[..., c:2 * c]
            if torch.is_grad_enabled() and qkv.requires_grad:
                q, k = F.relu(q), torch.add(k, pos.to(dtype)).relu_()
            else:  # inference: in qkv's own buffer, no new (B, N, C) tensors
                q, k = q.relu_(), k.add_(pos.to(dtype)).relu_()
            ksum = k.sum(dim=1).unsqueeze(-1)                             # (B, C, 1)
            for i in range(0, c, d):
                qh, kh, vh = q[..., i:i + d], k[..., i:i + d], v[..., i:i + d]  # (B, N, d)
                if n > d:  # q (k^T v) is the cheaper order
                    num_den = qh @ torch.cat([kh.transpose(1, 2) @ vh, ksum[:, i:i + d]], -1)
                    num, den = num_den[..., :d], num_den[..., d:]
                else:
                    num, den = (qh @ kh.transpose(1, 2)) @ vh, qh @ ksum[:, i:i + d]
                out[..., i:i + d].addcdiv_(num, den + 1e-6)
        return out.to(in_dtype)

    def _dwc(self, v: torch.Tensor, hw: HW) -> torch.Tensor:
        """The shared depthwise conv of every head's v: ``(B, N, C)`` (any row stride) ->
        a new contiguous ``(B, N, C)``; channels-last, one grouped conv for all heads."""
        b, n, c = v.shape
        heads = self.num_heads
        vmap = v.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
        vmap = vmap.contiguous(memory_format=torch.channels_last)
        weight, bias = self.dwc.weight.to(v.dtype), self.dwc.bias.to(v.dtype)
        if heads > 1:
            weight, bias = weight.repeat(heads, 1, 1, 1), bias.repeat(heads)
        out = F.conv2d(vmap, weight, bias, padding=self.dwc.padding, groups=c)
        return out.permute(0, 2, 3, 1).reshape(b, n, c)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        """The projection of a zero (normalised) token: the value of padded tokens."""
        if self.qkv_layout == 'qkv':
            return self.qkv.bias
        if self.q.bias is None:
            return None
        return torch.cat([self.q.bias, self.kv.bias])

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        return self.proj_drop(self.proj(self.mix_tokens(x, hw)))


class WindowAttention(nn.Module):
    """Swin window softmax attention with relative position bias.

    ``mix`` takes projected windows ``(B*nW, ws*ws, 3C)`` and an optional additive
    shift mask ``(nW, ws*ws, ws*ws)`` (0 / -100 as in Swin).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
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
        return self.qkv(x)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        return self.qkv.bias

    def mix(self, qkv: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention over projected windows ``(B*nW, ws*ws, 3C)``, before ``proj``."""
        bw, n, _ = qkv.shape
        heads, d = self.num_heads, self.embed_dims // self.num_heads
        q, k, v = qkv.view(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4)        # (B*nW, h, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).to(qkv.dtype)          # (h, N, N)
        if mask is not None:
            nw = mask.shape[0]
            attn_mask = bias.unsqueeze(0) + mask.unsqueeze(1).to(qkv.dtype)   # (nW, h, N, N)
            q, k, v = (t.view(bw // nw, nw, heads, n, d) for t in (q, k, v))
        else:
            attn_mask = bias
        if torch.is_grad_enabled() or (self.training and self.attn_drop > 0):
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.)
        else:  # inference: plain softmax(q k^T / sqrt(d) + bias) v, in place where possible
            # (SDPA's CPU math path adds an all-masked-row check that costs as much as
            # the softmax itself)
            attn = (q * d ** -0.5) @ k.transpose(-2, -1)
            out = attn.add_(attn_mask).softmax(dim=-1) @ v
        return out.reshape(bw, heads, n, d).transpose(1, 2).reshape(bw, n, self.embed_dims)


class SpatialReductionAttention(nn.Module):
    """PVT v1 softmax attention with spatial reduction (``sr`` conv + PRepBN ``norm``)."""

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
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.kv = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias or deploy)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, stride=sr_ratio)
            self.norm = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=ln_eps)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        return self.proj_drop(self.proj(self.mix_tokens(x, hw)))

    def mix_tokens(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        """Normalised tokens ``(B, H*W, C)`` -> attention output before ``proj``."""
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

    def switch_to_deploy(self) -> None:
        """Fold the reduced keys' PRepBN into ``kv``."""
        if isinstance(getattr(self, 'norm', None), PRepBN):
            self.kv = fold_affine_into_linear(self.kv, *self.norm.affine())
            self.norm = nn.Identity()
