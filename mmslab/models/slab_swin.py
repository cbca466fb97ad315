"""SLAB-Swin: Swin Transformer with SLA stages and PRepBN (SLAB.md section 4).

Follows the release's detection backbone: window sizes ``[56, 28, 7, 7]``, odd blocks
shifted by ``window // 2`` in every stage (the shift mask is ignored by SLA), zero padding
to whole windows (no clamping to the map), per-output LayerNorms ``norm0..norm3``.
"""
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.registry import MODELS
from timm.layers import DropPath, Mlp

from .attention import SimplifiedLinearAttention, WindowAttention
from .backbone_utils import SLABBackbone, check_out_indices, resolve_arch
from .checkpoint import convert_slab_swin
from .embed import PatchEmbed, linear_residual, mlp_residual
from .norms import PRepBN, fold_affine_into_linear

HW = Tuple[int, int]
LN_EPS = 1e-5  # SLAB-Swin's LayerNorm eps


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).transpose(2, 3)
    return x.reshape(-1, ws * ws, c)


def window_reverse(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * H/ws * W/ws, ws*ws, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(-1, h // ws, w // ws, ws, ws, c).transpose(2, 3)
    return x.reshape(-1, h, w, c)


def shift_window_mask(hp: int, wp: int, ws: int, shift: int,
                      device: torch.device) -> torch.Tensor:
    """Swin's shifted-window mask ``(nW, ws*ws, ws*ws)``: 0 within a region, -100 across."""
    img = torch.zeros(1, hp, wp, 1, device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@lru_cache(maxsize=32)
def window_gather_index(h: int, w: int, ws: int, shift: int,
                        device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices that do pad-to-whole-windows, roll by ``-shift`` and partition in one gather.

    Returns ``(gather, pad, inverse)``: windowed token ``i`` is token ``gather[i]`` of the
    ``h*w`` map (``pad`` lists the windowed positions that are padding, their ``gather`` is
    0); token ``t`` of the map is windowed token ``inverse[t]`` (un-partition, roll back,
    crop).
    """
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    with torch.inference_mode(False):  # cached: must not be inference tensors
        grid = torch.arange(hp * wp, device=device).view(1, hp, wp, 1)
        if shift:
            grid = torch.roll(grid, (-shift, -shift), dims=(1, 2))
        order = window_partition(grid, ws).flatten()
        row, col = order // wp, order % wp
        valid = (row < h) & (col < w)
        gather = torch.where(valid, row * w + col, 0)
        inverse = torch.empty(h * w, dtype=torch.long, device=device)
        inverse[gather[valid]] = torch.arange(order.numel(), device=device)[valid]
        return gather, (~valid).nonzero().flatten(), inverse


def _batched(index: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """``index`` into each of ``b`` stacked length-``n`` sequences (rows of a flat tensor)."""
    if b == 1:
        return index
    return (torch.arange(b, device=index.device).unsqueeze(1) * n + index).flatten()


class SLABSwinBlock(nn.Module):
    """norm1 -> qkv -> pad to whole windows -> shift -> window attention -> un-shift ->
    crop -> proj -> residual; norm2 -> MLP -> residual.

    The qkv projection runs before padding; padded tokens take ``attn.pad_qkv()`` (what a
    zero normalised token projects to), which the deploy fold preserves as ``qkv_pad``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 shift: bool,
                 attn_type: str,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 deploy: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.attn_type = attn_type
        self.deploy = deploy
        qkv_bias = qkv_bias or deploy
        self.norm1 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        if attn_type == 'L':
            self.attn = SimplifiedLinearAttention(embed_dims, num_heads, (window_size,) * 2,
                                                  'qkv', qkv_bias, drop)
        else:
            self.attn = WindowAttention(embed_dims, num_heads, window_size, qkv_bias,
                                        attn_drop, drop)
        if deploy:
            self.register_buffer('qkv_pad', torch.zeros(3 * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: HW, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        ws, s = self.window_size, self.shift_size
        qkv = self.attn.project(self.norm1(x)).reshape(b * n, 3 * c)
        # pad + roll + window partition as one row gather (and its inverse afterwards)
        gather, pad_pos, inverse = window_gather_index(hw[0], hw[1], ws, s, x.device)
        windows = qkv.index_select(0, _batched(gather, b, n))
        if pad_pos.numel():
            pad = self.qkv_pad if self.deploy else self.attn.pad_qkv()
            windows[_batched(pad_pos, b, gather.numel())] = 0 if pad is None else pad.to(qkv.dtype)
        windows = windows.view(-1, ws * ws, 3 * c)
        if self.attn_type == 'L':
            out = self.attn.mix(windows, (ws, ws))
        else:
            out = self.attn.mix(windows, mask if s else None)
        # un-partition, roll back, crop; then proj on the real tokens only, + residual
        out = out.reshape(-1, c).index_select(0, _batched(inverse, b, gather.numel()))
        x = linear_residual(x, out.view(b, n, c), self.attn.proj, self.attn.proj_drop,
                            self.drop_path)
        return mlp_residual(x, self.norm2, self.mlp, self.drop_path)

    def switch_to_deploy(self) -> None:
        if self.deploy:
            return
        pad = self.attn.pad_qkv()
        self.register_buffer('qkv_pad', torch.zeros_like(self.attn.qkv.weight[:, 0])
                             if pad is None else pad.detach().clone())
        self.attn.qkv = fold_affine_into_linear(self.attn.qkv, *self.norm1.affine())
        self.mlp.fc1 = fold_affine_into_linear(self.mlp.fc1, *self.norm2.affine())
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()
        self.deploy = True


class PatchMerging(nn.Module):
    """2x2 neighbour gather (zero-padding an odd map) -> PRepBN(4C) -> Linear(4C, 2C)."""

    def __init__(self, embed_dims: int, deploy: bool = False) -> None:
        super().__init__()
        self.norm = nn.Identity() if deploy else PRepBN(4 * embed_dims, ln_eps=LN_EPS)
        self.reduction = nn.Linear(4 * embed_dims, 2 * embed_dims, bias=deploy)

    def forward(self, x: torch.Tensor, hw: HW) -> Tuple[torch.Tensor, HW]:
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1).view(b, -1, 4 * c)
        return self.reduction(self.norm(x)), ((h + 1) // 2, (w + 1) // 2)

    def switch_to_deploy(self) -> None:
        if isinstance(self.norm, PRepBN):
            self.reduction = fold_affine_into_linear(self.reduction, *self.norm.affine())
            self.norm = nn.Identity()


class SLABSwinStage(nn.Module):
    """Blocks of one resolution (odd ones shifted), then the optional patch merging."""

    def __init__(self,
                 embed_dims: int,
                 depth: int,
                 num_heads: int,
                 window_size: int,
                 attn_type: str,
                 drop_paths: Sequence[float],
                 downsample: bool,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 with_cp: bool = False,
                 deploy: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn_type = attn_type
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            SLABSwinBlock(embed_dims, num_heads, window_size, i % 2 == 1, attn_type,
                          mlp_ratio, qkv_bias, drop, attn_drop, drop_paths[i], deploy)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(embed_dims, deploy) if downsample else None

    def forward(self, x: torch.Tensor, hw: HW) -> Tuple[torch.Tensor, HW, torch.Tensor, HW]:
        """Return the stage output with its size, and the next stage's input with its size."""
        ws = self.window_size
        mask = None
        if self.attn_type == 'S' and len(self.blocks) > 1:
            mask = shift_window_mask(-(-hw[0] // ws) * ws, -(-hw[1] // ws) * ws, ws, ws // 2,
                                     x.device)
        for blk in self.blocks:
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(blk, x, hw, mask, use_reentrant=False)
            else:
                x = blk(x, hw, mask)
        if self.downsample is None:
            return x, hw, x, hw
        y, next_hw = self.downsample(x, hw)
        return x, hw, y, next_hw


@MODELS.register_module()
class SLABSwin(SLABBackbone):
    """SLAB-Swin backbone for dense prediction.

    Args:
        arch: ``'tiny' | 'small' | 'base'``; explicit ``embed_dims`` (int), ``depths`` and
            ``num_heads`` override the preset.
        attn_types: one letter per stage, ``'L'`` = SLA, ``'S'`` = window softmax
            attention; ``'LLSS'`` is SLAB-Swin, ``'SSSS'`` with window 7 is Swin-PRepBN.
        window_sizes: per stage; the release's detection backbone uses ``[56, 28, 7, 7]``.
        pretrain_img_size: accepted for config compatibility with mmdet's Swin; SLA's
            positional encodings are sized by the window, not the image.
        out_indices: stages whose (LayerNorm-ed) maps ``forward`` returns.
        frozen_stages: -1 none; 0 the patch embedding; i also stages 0..i-1 (mmdet's Swin).
        norm_eval: keep RepBN's BatchNorms in eval mode while training (release default
            for detection, and right for small per-GPU batches).
        with_cp: activation checkpointing of every block.
        deploy: build the re-parameterized structure (norms folded, see
            :meth:`switch_to_deploy`) so a folded checkpoint loads strictly.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` accepts the released
            ImageNet files as they are (converted by :func:`convert_slab_swin`).
    """
    arch_zoo = {
        'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                     drop_path_rate=0.2),
        'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.3),
        'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                     drop_path_rate=0.5),
    }
    convert_checkpoint = staticmethod(convert_slab_swin)
    optional_keys = (r'^norm\d\.',)  # the per-output LayerNorms are new in detection

    def __init__(self,
                 arch: str = 'tiny',
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 attn_types: str = 'LLSS',
                 window_sizes: Union[int, Sequence[int]] = (56, 28, 7, 7),
                 pretrain_img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 4,
                 in_channels: int = 3,
                 mlp_ratio: float = 4.,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: Optional[float] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = True,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = resolve_arch(type(self).__name__, self.arch_zoo, arch,
                           embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                           drop_path_rate=drop_path_rate)
        embed_dims, depths, num_heads = cfg['embed_dims'], cfg['depths'], cfg['num_heads']
        if not isinstance(embed_dims, int):
            raise TypeError(f'SLABSwin embed_dims is one int (stage-1 width), got {embed_dims!r}')
        num_stages = len(depths)
        if isinstance(window_sizes, int):
            window_sizes = [window_sizes] * num_stages
        for name, value in (('num_heads', num_heads), ('attn_types', attn_types),
                            ('window_sizes', window_sizes)):
            if len(value) != num_stages:
                raise ValueError(f'SLABSwin: {name}={value!r} has {len(value)} entries, '
                                 f'depths={list(depths)} has {num_stages} stages')
        if set(attn_types) - {'L', 'S'}:
            raise ValueError(f"SLABSwin: attn_types={attn_types!r}: one letter per stage, "
                             f"'L' (SLA) or 'S' (window softmax attention)")
        self.out_indices = check_out_indices(out_indices, num_stages, 'SLABSwin')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'SLABSwin: frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')
        self.arch_settings = dict(embed_dims=embed_dims, depths=list(depths),
                                  num_heads=list(num_heads), attn_types=attn_types,
                                  window_sizes=list(window_sizes))
        self.pretrain_img_size = pretrain_img_size
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deploy = deploy

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, LN_EPS,
                                      pad_to_patch=True, deploy=deploy)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, cfg['drop_path_rate'], sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.num_features = [embed_dims * 2 ** i for i in range(num_stages)]
        for i in range(num_stages):
            self.stages.append(SLABSwinStage(
                self.num_features[i], depths[i], num_heads[i], window_sizes[i],
                attn_types[i], dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < num_stages - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                drop=drop_rate, attn_drop=attn_drop_rate, with_cp=with_cp, deploy=deploy))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i], eps=LN_EPS))
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self.check_input(x)
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            out, out_hw, x, hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                outs.append(out.transpose(1, 2).reshape(out.shape[0], -1, *out_hw))
            if i >= max(self.out_indices):
                break
        return tuple(outs)

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: List[nn.Module] = [self.patch_embed]
        for i in range(self.frozen_stages):
            mods.append(self.stages[i])
            if i in self.out_indices:
                mods.append(getattr(self, f'norm{i}'))
        return mods
