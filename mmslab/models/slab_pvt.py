"""SLAB-PVT: PVT v1 with simplified linear attention and PRepBN (docs/method.md, "SLAB-PVT").

One :class:`SLABPVTStage` per stage: patch embedding (strided conv -> PRepBN) -> + the
stage's absolute position embedding (resized bilinearly to the input's grid) -> dropout
-> blocks -> (B, C, H, W) map. Attention per stage: ``'L'`` = SLA (no spatial
reduction, as the release), ``'S'`` = PVT's spatial-reduction softmax attention (the
PVT-PRepBN variant).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.registry import MODELS

from ..validation import check_int_seq, check_size_2d, check_str_letters
from . import cpu_inference
from .arch import PVT_ARCHS, PVTArch
from .attention import SimplifiedLinearAttention, SpatialReductionAttention, TokenMixer
from .base_backbone import SLABBackbone
from .embed import PatchEmbed
from .key_conversion import convert_slab_pvt
from .mlp import Mlp
from ..prepbn import PRepBN, fold_affine_into_linear
from .pos_embed import resize_pos_embed
from .shapes import symbolic_sizes

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
        self.attn: TokenMixer
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
        if cpu_inference.applies(x, self):
            return cpu_inference.pvt_block(self, x, hw)
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def switch_to_deploy(self) -> None:
        if not isinstance(self.norm1, PRepBN):
            return
        self.attn.fold_input_affine(*self.norm1.affine())
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
        arch: ``'tiny' | 'small' | 'medium' | 'large'`` (:data:`~.arch.PVT_ARCHS`), a dict
            of the settings or a :class:`~.arch.PVTArch`; explicit ``embed_dims``,
            ``num_heads``, ``mlp_ratios``, ``depths`` (lists) override the preset.
        attn_types: one letter per stage: ``'L'`` SLA (SLAB-PVT, ``'LLLL'``), ``'S'`` PVT's
            spatial-reduction softmax attention (``'SSSS'`` = PVT-PRepBN).
        sr_ratios: spatial-reduction ratios of ``'S'`` stages.
        pretrain_img_size: image size the position tables were trained for (224); they
            are resized to every input's token grid at run time.
        out_indices: stages whose maps ``forward`` returns.
        frozen_stages: as mmdet's Swin / ResNet (and :class:`SLABSwin`): -1 nothing; 0 the
            stem, i.e. stage 0's patch embedding, its position table ``pos_embed`` and the
            dropout after it; ``k >= 1`` the stem and stages ``0..k-1`` with everything they
            hold. (mmdet 3.x's ``PyramidVisionTransformer`` has no ``frozen_stages``.)
        norm_eval / with_cp / deploy / init_cfg: as in :class:`SLABSwin`.
    """
    arch_zoo = PVT_ARCHS
    convert_checkpoint = staticmethod(convert_slab_pvt)

    def __init__(self,
                 arch: Union[str, Dict[str, Any], PVTArch] = 'tiny',
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
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = 'SLABPVT'
        preset = PVTArch.resolve(name, self.arch_zoo, arch, embed_dims=embed_dims,
                                 num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths)
        depths, embed_dims = list(preset.depths), list(preset.embed_dims)
        num_heads, mlp_ratios = list(preset.num_heads), list(preset.mlp_ratios)
        num_stages = preset.num_stages
        per_stage = f'one per stage: depths={depths} has {num_stages} stages'
        attn_types = check_str_letters(
            name, 'attn_types', attn_types, 'LS', num_stages, length_hint=per_stage,
            meaning="'L' (SLA) or 'S' (spatial-reduction softmax attention)")
        sr_ratios = list(check_int_seq(name, 'sr_ratios', sr_ratios, num_stages, min=1,
                                       length_hint=per_stage, scalar=True))
        self.set_common_options(num_stages, in_channels=in_channels, out_indices=out_indices,
                                frozen_stages=frozen_stages, drop_rate=drop_rate,
                                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                                qkv_bias=qkv_bias, norm_eval=norm_eval, with_cp=with_cp,
                                deploy=deploy)
        pretrain_img_size = check_size_2d(name, 'pretrain_img_size', pretrain_img_size,
                                          min=4 * 2 ** (num_stages - 1))
        in_channels = self.in_channels
        self.arch = preset
        self.arch_settings = dict(preset.as_dict(), attn_types=attn_types)
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
        self.check_input(x, self.stages[0].patch_embed.proj.weight.dtype, self.min_input_size)
        if not symbolic_sizes() and x.shape[0] == 0:
            return self.empty_outputs(x)
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x.contiguous())
            if i >= max(self.out_indices):
                break
        return tuple(outs)

    def feature_shapes(self, h: int, w: int) -> List[Tuple[int, HW]]:
        shapes = []
        for i, c in enumerate(self.arch_settings['embed_dims']):
            h, w = (h // 4, w // 4) if i == 0 else (h // 2, w // 2)  # strided convs floor
            shapes.append((c, (h, w)))
        return [shapes[i] for i in self.out_indices]

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = self.stages[0]
        return [stem.patch_embed, stem.pos_drop, *self.stages[:self.frozen_stages]]

    def frozen_parameters(self) -> List[nn.Parameter]:
        return [self.stages[0].pos_embed] if self.frozen_stages >= 0 else []
