"""Patch embedding shared by the SLAB backbones: strided conv -> PRepBN on the tokens."""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..prepbn import PRepBN, fold_affine_into_conv
from .shapes import ceil_div, symbolic_sizes


def pad_to_multiple(x: torch.Tensor, multiple: int, dims: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad the two dims ``dims`` (height, width) of ``x`` at their end to a multiple of
    ``multiple``. With symbolic sizes (:func:`~.shapes.symbolic_sizes`) it always emits the
    pad (of 0 where the size already fits), so a traced / exported graph holds for every
    size; the padded size is ``ceil_div(n, multiple) * multiple``."""
    h, w = x.shape[dims[0]], x.shape[dims[1]]
    pad_h = ceil_div(h, multiple) * multiple - h
    pad_w = ceil_div(w, multiple) * multiple - w
    if not symbolic_sizes() and not (pad_h or pad_w):
        return x
    pad = [0, 0] * (x.dim() - 1 - dims[1]) + [0, pad_w] + [0, 0] * (dims[1] - dims[0] - 1) \
        + [0, pad_h]
    return F.pad(x, pad)


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
        if self.pad_to_patch:
            x = pad_to_multiple(x, self.patch_size, (2, 3))
        # Channels-last conv: its output *is* the token-major (B, H*W, C) layout, so the
        # tokens come out contiguous without a transpose copy.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        b, c, h, w = x.shape
        return self.norm(x.permute(0, 2, 3, 1).reshape(b, h * w, c)), (h, w)

    def switch_to_deploy(self) -> None:
        if isinstance(self.norm, PRepBN):
            self.proj = fold_affine_into_conv(self.proj, *self.norm.affine())
            self.norm = nn.Identity()
