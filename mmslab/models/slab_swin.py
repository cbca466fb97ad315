"""SLAB-Swin: Swin Transformer with SLA stages and PRepBN (docs/method.md, "SLAB-Swin").

Follows the release's detection backbone: window sizes ``[56, 28, 7, 7]``, odd blocks
shifted by ``window // 2`` in every stage (the shift mask is ignored by SLA), zero padding
to whole windows (no clamping to the map), per-output LayerNorms ``norm0..norm3``.
``clamp_windows`` and ``final_norm`` give the release's classification model instead
(docs/classification.md): windows clamped to the 224 maps, no shift where a map fits one
window, and the final PRepBN ``norm`` on the last stage.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.registry import MODELS

from ..validation import (check_bool, check_float, check_int, check_int_seq, check_size_2d,
                          check_str_letters)
from . import cpu_inference
from .arch import SWIN_ARCHS, SwinArch
from .attention import SimplifiedLinearAttention, TokenMixer, WindowAttention
from .base_backbone import SLABBackbone
from .classifier_conversion import convert_slab_swin_with_final_norm
from .embed import PatchEmbed, pad_to_multiple
from .key_conversion import convert_slab_swin
from .mlp import Mlp
from ..prepbn import PRepBN, fold_affine_into_linear
from .shapes import ceil_div, symbolic_sizes
from .windows import batched_index, shift_window_mask, window_index

HW = Tuple[int, int]
LN_EPS = 1e-5  # SLAB-Swin's LayerNorm eps


class SLABSwinBlock(nn.Module):
    """norm1 -> qkv -> pad to whole windows -> shift -> window attention -> un-shift ->
    crop -> proj -> residual; norm2 -> MLP -> residual (pad + shift + partition and the
    way back are one row gather each, :func:`~.windows.window_index`).

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
        self.embed_dims = embed_dims
        self.shift_size = window_size // 2 if shift else 0
        self.deploy = deploy
        qkv_bias = qkv_bias or deploy
        self.norm1 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        self.attn: TokenMixer
        if attn_type == 'L':
            self.attn = SimplifiedLinearAttention(embed_dims, num_heads, (window_size,) * 2,
                                                  'qkv', qkv_bias, drop, fixed_grid=True)
        else:
            self.attn = WindowAttention(embed_dims, num_heads, window_size, qkv_bias,
                                        attn_drop, drop)
        if deploy:
            self.register_buffer('qkv_pad', torch.zeros(3 * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.Identity() if deploy else PRepBN(embed_dims, ln_eps=LN_EPS)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop=drop)

    def pad_value(self) -> Optional[torch.Tensor]:
        """The projection of a zero normalised token (what padded tokens hold)."""
        return self.qkv_pad if self.deploy else self.attn.pad_qkv()

    def forward(self, x: torch.Tensor, hw: HW, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if cpu_inference.applies(x, self):
            return cpu_inference.swin_block(self, x, hw, mask)
        b, n, c = x.shape
        ws, s = self.window_size, self.shift_size
        # pad + roll + partition as one row gather, and back (see .windows: no reshape of
        # the map into windows, so no size is frozen when traced, compiled or exported)
        gather, valid, inverse = window_index(hw[0], hw[1], ws, s, x.device)
        tokens = gather.shape[0]                                              # nW * ws*ws
        qkv = self.attn.project(self.norm1(x)).reshape(b * n, 3 * c)
        windows = qkv.index_select(0, batched_index(gather, b, n))
        pad = self.pad_value()
        windows = torch.where(valid.repeat(b).unsqueeze(-1), windows,
                              qkv.new_zeros(()) if pad is None else pad.to(qkv.dtype))
        windows = windows.view(b * (tokens // (ws * ws)), ws * ws, 3 * c)    # (B*nW, ws*ws, 3C)
        out = self.attn.mix(windows, (ws, ws), mask if s else None)
        out = out.reshape(b * tokens, c).index_select(0, batched_index(inverse, b, tokens))
        x = x + self.drop_path(self.attn.proj_drop(self.attn.proj(out.view(b, n, c))))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def switch_to_deploy(self) -> None:
        if self.deploy:
            return
        pad = self.attn.pad_qkv()
        self.register_buffer('qkv_pad', self.attn.proj.weight.new_zeros(3 * self.embed_dims)
                             if pad is None else pad.detach().clone())
        self.attn.fold_input_affine(*self.norm1.affine())
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
        x = pad_to_multiple(x.reshape(b, h, w, c), 2, (1, 2))
        h2, w2 = ceil_div(h, 2), ceil_div(w, 2)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1).reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x)), (h2, w2)

    def switch_to_deploy(self) -> None:
        if isinstance(self.norm, PRepBN):
            self.reduction = fold_affine_into_linear(self.reduction, *self.norm.affine())
            self.norm = nn.Identity()


class SLABSwinStage(nn.Module):
    """Blocks of one resolution (odd ones shifted, unless ``shift=False``), then the
    optional patch merging."""

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
                 deploy: bool = False,
                 shift: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            SLABSwinBlock(embed_dims, num_heads, window_size, shift and i % 2 == 1, attn_type,
                          mlp_ratio, qkv_bias, drop, attn_drop, drop_paths[i], deploy)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(embed_dims, deploy) if downsample else None

    def forward(self, x: torch.Tensor, hw: HW) -> Tuple[torch.Tensor, HW, torch.Tensor, HW]:
        """Return the stage output with its size, and the next stage's input with its size."""
        ws = self.window_size
        mask = None
        if (len(self.blocks) > 1 and self.blocks[1].shift_size
                and self.blocks[1].attn.uses_shift_mask):
            mask = shift_window_mask(ceil_div(hw[0], ws) * ws, ceil_div(hw[1], ws) * ws, ws,
                                     ws // 2, x.device, x.shape[0])
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
        arch: ``'tiny' | 'small' | 'base'`` (:data:`~.arch.SWIN_ARCHS`), a dict of the
            settings or a :class:`~.arch.SwinArch`; explicit ``embed_dims`` (int),
            ``depths`` and ``num_heads`` override the preset.
        attn_types: one letter per stage, ``'L'`` = SLA, ``'S'`` = window softmax
            attention; ``'LLSS'`` is SLAB-Swin, ``'SSSS'`` with window 7 is Swin-PRepBN.
        window_sizes: per stage; the release's detection backbone uses ``[56, 28, 7, 7]``.
        pretrain_img_size: accepted for config compatibility with mmdet's Swin; SLA's
            positional encodings are sized by the window, not the image.
        out_indices: stages whose (LayerNorm-ed) maps ``forward`` returns.
        drop_path_rate: the stochastic-depth rate of the last block (linear from 0); a
            training choice, not part of the preset (mmdet's Swin default 0.1; the
            release's recipes: 0.2 tiny, 0.3 small, 0.5 base).
        frozen_stages: as mmdet's Swin / ResNet: -1 nothing; 0 the stem (the patch
            embedding and the dropout after it); ``k >= 1`` the stem and stages
            ``0..k-1`` (each with its patch merging) and their output norms.
        norm_eval: keep RepBN's BatchNorms in eval mode while training (release default
            for detection, and right for small per-GPU batches).
        with_cp: activation checkpointing of every block.
        deploy: build the re-parameterized structure (norms folded, see
            :meth:`switch_to_deploy`) so a folded checkpoint loads strictly.
        clamp_windows: the release's classification rule instead of its detection one:
            a stage whose map at ``pretrain_img_size`` is no larger than its window
            (``min(H, W) <= window``) takes the map's size as its window and is not
            shifted (at 224: windows 56 / 28 / 7 / 7, shifted blocks only in stage 3).
            Default False (detection: every odd block shifted, windows as given).
        final_norm: a PRepBN ``norm`` (the release's classification ``norm``) on the
            last stage's output instead of the LayerNorm ``norm<last>``; the last stage
            must be in ``out_indices``. Loaded from a release file with the backbone;
            :meth:`switch_to_deploy` turns it into its affine map. Default False.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` accepts the released
            ImageNet files as they are (converted by :func:`convert_slab_swin`; with
            ``final_norm`` the file's ``norm`` is loaded too).
    """
    arch_zoo = SWIN_ARCHS
    convert_checkpoint = staticmethod(convert_slab_swin)
    optional_keys = (r'^norm\d\.',)  # the per-output LayerNorms are new in detection

    def __init__(self,
                 arch: Union[str, Dict[str, Any], SwinArch] = 'tiny',
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
                 drop_path_rate: float = 0.1,
                 frozen_stages: int = -1,
                 norm_eval: bool = True,
                 with_cp: bool = False,
                 deploy: bool = False,
                 clamp_windows: bool = False,
                 final_norm: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        self.clamp_windows = check_bool(name, 'clamp_windows', clamp_windows)
        self.final_norm = check_bool(name, 'final_norm', final_norm)
        preset = SwinArch.resolve(name, self.arch_zoo, arch, embed_dims=embed_dims,
                                  depths=depths, num_heads=num_heads)
        embed_dims = preset.embed_dims
        depths, num_heads = list(preset.depths), list(preset.num_heads)
        num_stages = preset.num_stages
        per_stage = f'one per stage: depths={depths} has {num_stages} stages'
        attn_types = check_str_letters(name, 'attn_types', attn_types, 'LS', num_stages,
                                       meaning="'L' (SLA) or 'S' (window softmax attention)",
                                       length_hint=per_stage)
        window_sizes = list(check_int_seq(name, 'window_sizes', window_sizes, num_stages, min=1,
                                          length_hint=per_stage, scalar=True))
        mlp_ratio = check_float(name, 'mlp_ratio', mlp_ratio, min=0, min_open=True)
        if int(embed_dims * mlp_ratio) < 1:
            raise ValueError(f'{name}: mlp_ratio={mlp_ratio:g} gives stage 0 an MLP of '
                             f'int({embed_dims} * {mlp_ratio:g}) = 0 hidden channels; it must '
                             f'be >= {1 / embed_dims:g}')
        patch_size = check_int(name, 'patch_size', patch_size, min=1)
        self.set_common_options(num_stages, in_channels=in_channels, out_indices=out_indices,
                                frozen_stages=frozen_stages, drop_rate=drop_rate,
                                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                                qkv_bias=qkv_bias, norm_eval=norm_eval, with_cp=with_cp,
                                deploy=deploy)
        in_channels = self.in_channels
        self.pretrain_img_size = check_size_2d(name, 'pretrain_img_size', pretrain_img_size,
                                               min=1)
        shifts = [True] * num_stages
        if clamp_windows:
            window_sizes, shifts = classification_windows(self.pretrain_img_size, patch_size,
                                                          window_sizes)
        last = num_stages - 1
        if final_norm and last not in self.out_indices:
            raise ValueError(f'{name}: final_norm=True normalises the last stage (stage '
                             f'{last}); out_indices={list(self.out_indices)} must include it '
                             f'(a classifier uses out_indices=({last},))')
        if final_norm:  # the release's classification loader keeps the file's final norm
            self.convert_checkpoint = convert_slab_swin_with_final_norm
        self.arch = preset
        self.arch_settings = dict(preset.as_dict(), attn_types=attn_types,
                                  window_sizes=list(window_sizes))

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, LN_EPS,
                                      pad_to_patch=True, deploy=deploy)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.num_features = list(preset.widths)
        for i in range(num_stages):
            self.stages.append(SLABSwinStage(
                self.num_features[i], depths[i], num_heads[i], window_sizes[i],
                attn_types[i], dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < num_stages - 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                drop=drop_rate, attn_drop=attn_drop_rate, with_cp=with_cp, deploy=deploy,
                shift=shifts[i]))
        for i in self.out_indices:
            if final_norm and i == last:
                self.norm = PRepBN(self.num_features[i], ln_eps=LN_EPS, deploy=deploy)
            else:
                self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i], eps=LN_EPS))

    def output_norm(self, i: int) -> nn.Module:
        """The norm of stage ``i``'s output (one of ``out_indices``): the LayerNorm
        ``norm<i>``, or the PRepBN ``norm`` of the last stage with ``final_norm``."""
        if self.final_norm and i == len(self.stages) - 1:
            return self.norm
        return getattr(self, f'norm{i}')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self.check_input(x, self.patch_embed.proj.weight.dtype)
        if not symbolic_sizes() and x.shape[0] == 0:
            return self.empty_outputs(x)
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            out, out_hw, x, hw = stage(x, hw)
            if i in self.out_indices:
                out = self.output_norm(i)(out)
                outs.append(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], *out_hw))
            if i >= max(self.out_indices):
                break
        return tuple(outs)

    def feature_shapes(self, h: int, w: int) -> List[Tuple[int, HW]]:
        p = self.patch_embed.patch_size
        h, w = -(-h // p), -(-w // p)  # padded to the patch size, then ceil per merge
        shapes = []
        for c in self.num_features:
            shapes.append((c, (h, w)))
            h, w = -(-h // 2), -(-w // 2)
        return [shapes[i] for i in self.out_indices]

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: List[nn.Module] = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            mods.append(self.stages[i])
            if i in self.out_indices:
                mods.append(self.output_norm(i))
        return mods

    def switch_to_deploy(self) -> None:
        """Fold every norm (see :meth:`SLABBackbone.switch_to_deploy`); with
        ``final_norm`` the final PRepBN becomes its exact affine map (``norm.scale`` /
        ``norm.shift``). Checked first: nothing changes unless every PRepBN folds."""
        if self.deploy:
            return
        super().switch_to_deploy()  # checks every PRepBN, the final norm included
        if self.final_norm:
            self.norm.switch_to_deploy()


def classification_windows(img_size: HW, patch_size: int,
                           window_sizes: Sequence[int]) -> Tuple[List[int], List[bool]]:
    """The release's classification windows: per stage, the window and whether its odd
    blocks are shifted. Stage maps are the patch grid of ``img_size``, halved per stage
    (rounded up, as :class:`PatchMerging`; the release floors: the same at 224); a stage
    whose map has ``min(H, W) <= window`` gets window ``min(H, W)`` and no shift."""
    h, w = ceil_div(img_size[0], patch_size), ceil_div(img_size[1], patch_size)
    windows, shifts = [], []
    for ws in window_sizes:
        fits = min(h, w) <= ws
        windows.append(min(h, w) if fits else ws)
        shifts.append(not fits)
        h, w = ceil_div(h, 2), ceil_div(w, 2)
    return windows, shifts
