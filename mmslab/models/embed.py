"""Patch embedding shared by the SLAB backbones: strided conv -> PRepBN on the tokens; and
the inference fast paths of the blocks' residual and MLP (in place when no autograd)."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import PRepBN, fold_affine_into_conv


class PatchEmbed(nn.Module):
    """``(B, C_in, H, W) -> (B, H'*W', C)`` tokens and ``(H', W')``.

    Args:
        pad_to_patch: zero-pad the input right/bottom to a multiple of the patch size
            first (Swin); otherwise the strided conv floors (PVT), as in the release.
        deploy: build the folded form (the norm folded into the conv).
    """

    def __init__(self,
                 in_channels: int,
                 embed_dims: int,
                 patch_size: int,
                 ln_eps: float,
                 pad_to_patch: bool = False,
                 deploy: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pad_to_patch = pad_to_patch
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=ln_eps)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        p = self.patch_size
        if self.pad_to_patch and (x.shape[2] % p or x.shape[3] % p):
            x = F.pad(x, (0, (p - x.shape[3] % p) % p, 0, (p - x.shape[2] % p) % p))
        # Channels-last conv: its output *is* the token-major (B, H*W, C) layout, so the
        # tokens come out contiguous without a transpose copy.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        b, c, h, w = x.shape
        return self.norm(x.permute(0, 2, 3, 1).reshape(b, h * w, c)), (h, w)

    def switch_to_deploy(self) -> None:
        if isinstance(self.norm, PRepBN):
            self.proj = fold_affine_into_conv(self.proj, *self.norm.affine())
            self.norm = nn.Identity()


def _no_autograd(t: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and t.requires_grad)


def add_residual(x: torch.Tensor, y: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(y)``; adds into ``y`` in place when autograd is off."""
    y = drop_path(y)
    return y.add_(x) if _no_autograd(y) and y.shape == x.shape else x + y


def _active(m: nn.Module) -> bool:
    """A module that behaves differently in training (dropout, drop path, BatchNorm)."""
    return m.training and not isinstance(m, nn.Identity)


def linear_residual(x: torch.Tensor, y: torch.Tensor, linear: nn.Linear, drop: nn.Module,
                    drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(drop(linear(y)))``.

    Inference (no autograd, dropouts inactive): ``x + bias`` is written to the output
    first and the GEMM accumulates into it (BLAS ``beta = 1``), so the residual add costs
    no extra pass over the tokens.
    """
    if (torch.is_grad_enabled() or _active(drop) or _active(drop_path) or linear.bias is None
            or y.shape[:-1] != x.shape[:-1] or x.shape[-1] != linear.out_features
            or not x.dtype == y.dtype == linear.weight.dtype
            or torch.is_autocast_enabled(x.device.type)):
        return add_residual(x, drop(linear(y)), drop_path)
    out = torch.add(x, linear.bias.to(x.dtype))
    out.view(-1, out.shape[-1]).addmm_(y.reshape(-1, y.shape[-1]), linear.weight.t())
    return out


def mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for timm's ``Mlp`` (fc1 -> GELU -> fc2); without autograd and in eval the
    GELU runs in place on fc1's output (saves a full-width temporary)."""
    act = getattr(mlp, 'act', None)
    if mlp.training or type(act) is not nn.GELU or act.approximate != 'none':
        return mlp(x)
    h = mlp.fc1(x)
    h = torch.ops.aten.gelu_(h) if _no_autograd(h) else F.gelu(h)
    return mlp.fc2(mlp.norm(h))


#: hidden-layer elements per token chunk of the inference MLP (16 MB in fp32: below glibc's
#: 32 MB mmap ceiling, so malloc recycles the chunk instead of mapping fresh pages each time)
MLP_CHUNK = 1 << 22


def mlp_residual(x: torch.Tensor, norm: nn.Module, mlp: nn.Module,
                 drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(mlp(norm(x)))``.

    Inference (eval modules, no autograd): runs over chunks of tokens (``MLP_CHUNK``
    hidden elements each), so the norm output and the ``mlp_ratio``-times wider hidden
    layer are recycled temporaries instead of fresh full-size tensors (on CPU every fresh
    large tensor is page-faulted in); fc2 writes into the output, the residual is added
    there (``x + bias`` first, the fc2 GEMM accumulates into it). Chunks keep thousands of
    rows, so the GEMMs stay at full speed.
    """
    fc1, fc2 = mlp.fc1, mlp.fc2
    if (x.dim() < 2 or torch.is_grad_enabled() or mlp.training or _active(drop_path)
            or _active(norm) or not isinstance(norm, (nn.Identity, PRepBN))
            or type(getattr(mlp, 'act', None)) is not nn.GELU or mlp.act.approximate != 'none'
            or fc2.bias is None):
        return add_residual(x, mlp_forward(mlp, norm(x)), drop_path)
    scale_shift = norm.affine() if isinstance(norm, PRepBN) else None
    if scale_shift is not None:
        scale_shift = tuple(t.to(x.dtype) for t in scale_shift)
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(x2)
    rows = max(64, MLP_CHUNK // fc1.out_features)
    w2 = fc2.weight.t()
    for i in range(0, x2.shape[0], rows):
        xi, oi = x2[i:i + rows], out[i:i + rows]
        h = fc1(xi if scale_shift is None else torch.addcmul(scale_shift[1], xi, scale_shift[0]))
        torch.add(xi, fc2.bias, out=oi)  # residual + bias, then the GEMM accumulates
        oi.addmm_(mlp.norm(torch.ops.aten.gelu_(h)), w2)
    return out.view_as(x)
