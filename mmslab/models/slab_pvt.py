"""SLAB-PVT: PVT v1 with simplified linear attention and PRepBN (SLAB.md section 3).

One :class:`SLABPVTStage` per stage: patch embedding (strided conv -> PRepBN) -> + the
stage's absolute position embedding (resized bilinearly to the input's grid) -> dropout
-> blocks -> (B, C, H, W) map. Attention per stage: ``'L'`` = SLA (no spatial
reduction, as the release), ``'S'`` = PVT's spatial-reduction softmax attention (the
PVT-PRepBN variant).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.registry import MODELS
from timm.layers import DropPath, Mlp

from .attention import SimplifiedLinearAttention, SpatialReductionAttention, resize_pos_embed
from .backbone_utils import SLABBackbone, check_out_indices, resolve_arch
from .checkpoint import convert_slab_pvt
from .embed import PatchEmbed, linear_residual, mlp_residual
from .norms import PRepBN, fold_affine_into_conv_input, fold_affine_into_linear

HW = Tuple[int, int]
LN_EPS = 1e-6  # SLAB-PVT's LayerNorm eps


class SLABPVTBlock(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 attn_type: str,
                 pos_grid: HW,
                 sr_ratio: int = 1,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 deploy: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        if attn_type == 'L':
            self.attn = SimplifiedLinearAttention(embed_dims, num_heads, pos_grid, 'q_kv',
                                                  qkv_bias or deploy, drop)
        else:
            self.attn = SpatialReductionAttention(embed_dims, num_heads, sr_ratio,
                                                  qkv_bias or deploy, attn_drop, drop,
                                                  ln_eps=LN_EPS, deploy=deploy)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        attn = self.attn
        x = linear_residual(x, attn.mix_tokens(self.norm1(x), hw), attn.proj, attn.proj_drop,
                            self.drop_path)
        return mlp_residual(x, self.norm2, self.mlp, self.drop_path)

    def switch_to_deploy(self) -> None:
        if not isinstance(self.norm1, PRepBN):
            return
        scale, shift = self.norm1.affine()
        attn = self.attn
        attn.q = fold_affine_into_linear(attn.q, scale, shift)
        if getattr(attn, 'sr_ratio', 1) > 1:
            attn.sr = fold_affine_into_conv_input(attn.sr, scale, shift)
        else:
            attn.kv = fold_affine_into_linear(attn.kv, scale, shift)
        self.mlp.fc1 = fold_affine_into_linear(self.mlp.fc1, *self.norm2.affine())
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()


class SLABPVTStage(nn.Module):
    """Patch embedding, position embedding and the blocks of one stage."""

    def __init__(self,
                 in_channels: int,
                 embed_dims: int,
                 patch_size: int,
                 pos_grid: HW,
                 depth: int,
                 num_heads: int,
                 mlp_ratio: float,
                 attn_type: str,
                 drop_paths: Sequence[float],
                 sr_ratio: int = 1,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 with_cp: bool = False,
                 deploy: bool = False) -> None:
        super().__init__()
        self.pos_grid = tuple(pos_grid)
        self.with_cp = with_cp
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, LN_EPS,
                                      pad_to_patch=False, deploy=deploy)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], embed_dims))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([
            SLABPVTBlock(embed_dims, num_heads, mlp_ratio, attn_type, pos_grid, sr_ratio,
                         qkv_bias, drop, attn_drop, drop_paths[i], deploy)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, hw = self.patch_embed(x)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.pos_grid, hw).to(x.dtype))
        for blk in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        # (B, C, H, W) view of the token-major tensor (channels-last strides, no copy): the
        # next patch embedding consumes it as is; SLABPVT.forward makes outputs contiguous.
        return x.reshape(x.shape[0], *hw, x.shape[-1]).permute(0, 3, 1, 2)


@MODELS.register_module()
class SLABPVT(SLABBackbone):
    """SLAB-PVT backbone (PVT v1 skeleton, SLA, PRepBN) for dense prediction.

    Args:
        arch: ``'tiny' | 'small' | 'medium' | 'large'``; explicit ``embed_dims``,
            ``num_heads``, ``mlp_ratios``, ``depths`` (lists) override the preset.
        attn_types: one letter per stage: ``'L'`` SLA (SLAB-PVT, ``'LLLL'``), ``'S'`` PVT's
            spatial-reduction softmax attention (``'SSSS'`` = PVT-PRepBN).
        sr_ratios: spatial-reduction ratios of ``'S'`` stages.
        pretrain_img_size: image size the position tables were trained for (224); they
            are resized to every input's token grid at run time.
        out_indices / frozen_stages (-1 none; i freezes stages 0..i-1) / norm_eval /
            with_cp / deploy / init_cfg: as in :class:`SLABSwin`.
    """
    arch_zoo = {
        name: dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                   mlp_ratios=(8, 8, 4, 4), depths=depths)
        for name, depths in (('tiny', (2, 2, 2, 2)), ('small', (3, 4, 6, 3)),
                             ('medium', (3, 4, 18, 3)), ('large', (3, 8, 27, 3)))
    }
    convert_checkpoint = staticmethod(convert_slab_pvt)

    def __init__(self,
                 arch: str = 'tiny',
                 embed_dims: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 mlp_ratios: Optional[Sequence[float]] = None,
                 depths: Optional[Sequence[int]] = None,
                 attn_types: str = 'LLLL',
                 sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 pretrain_img_size: Union[int, Sequence[int]] = 224,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 frozen_stages: int = -1,
                 norm_eval: bool = True,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = resolve_arch('SLABPVT', self.arch_zoo, arch, embed_dims=embed_dims,
                           num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths)
        embed_dims, num_heads = list(cfg['embed_dims']), list(cfg['num_heads'])
        mlp_ratios, depths = list(cfg['mlp_ratios']), list(cfg['depths'])
        num_stages = len(depths)
        for name, value in (('embed_dims', embed_dims), ('num_heads', num_heads),
                            ('mlp_ratios', mlp_ratios), ('attn_types', attn_types),
                            ('sr_ratios', sr_ratios)):
            if len(value) != num_stages:
                raise ValueError(f'SLABPVT: {name}={value!r} has {len(value)} entries, '
                                 f'depths={depths} has {num_stages} stages')
        if set(attn_types) - {'L', 'S'}:
            raise ValueError(f"SLABPVT: attn_types={attn_types!r}: one letter per stage, "
                             f"'L' (SLA) or 'S' (spatial-reduction softmax attention)")
        self.out_indices = check_out_indices(out_indices, num_stages, 'SLABPVT')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'SLABPVT: frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')
        if isinstance(pretrain_img_size, int):
            pretrain_img_size = (pretrain_img_size, pretrain_img_size)
        self.arch_settings = dict(embed_dims=embed_dims, num_heads=num_heads,
                                  mlp_ratios=mlp_ratios, depths=depths, attn_types=attn_types)
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = deploy
        self.min_input_size = 4 * 2 ** (num_stages - 1)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        grid = tuple(pretrain_img_size)
        for i in range(num_stages):
            patch = 4 if i == 0 else 2
            grid = (grid[0] // patch, grid[1] // patch)
            self.stages.append(SLABPVTStage(
                in_channels if i == 0 else embed_dims[i - 1], embed_dims[i], patch, grid,
                depths[i], num_heads[i], mlp_ratios[i], attn_types[i],
                dpr[sum(depths[:i]):sum(depths[:i + 1])], sr_ratios[i], qkv_bias, drop_rate,
                attn_drop_rate, with_cp, deploy))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self.check_input(x, self.min_input_size)
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x.contiguous())
            if i >= max(self.out_indices):
                break
        return tuple(outs)

    def frozen_modules(self) -> List[nn.Module]:
        return list(self.stages[:max(self.frozen_stages, 0)])
