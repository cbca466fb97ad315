"""Patch embedding shared by the SLAB backbones: strided conv -> PRepBN on the tokens."""
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
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw

    def switch_to_deploy(self) -> None:
        if isinstance(self.norm, PRepBN):
            self.proj = fold_affine_into_conv(self.proj, *self.norm.affine())
            self.norm = nn.Identity()
