"""SLAB's DeiT family as one backbone: DeiT-PRepBN / DeiT-RepBN and SLAB-DeiT.

A plain (one-resolution) vision transformer as the release's ``classification/models/
deit.py`` and ``slab_deit.py``: patch conv (no norm after it) -> [class token] -> + learned
position table -> dropout -> blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` -> final
norm. The norms are PRepBN ("LinearNorm": LayerNorm eps 1e-6 + RepBN) or plain RepBN; the
attention is softmax multi-head attention (DeiT-PRepBN / -RepBN) or SLA (SLAB-DeiT: one
``qkv`` Linear, the positional encoding P of the pretraining token grid added to k, a 5x5
depthwise conv on v shared by all heads).

Release layouts (:func:`~.key_conversion.convert_deit`): DeiT-PRepBN / -RepBN keep DeiT's
class token, ``pos_embed`` is ``(1, 1 + 196, C)`` and the classifier reads
``norm(x)[:, 0]``; SLAB-DeiT has a ``cls_token`` parameter it never uses, ``pos_embed``
``(1, 196, C)`` without a class-token entry, and the classifier reads the token mean of
``norm(x)``.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.logging import MMLogger, print_log
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS

from ..prepbn import PRepBN, RepBN, fold_affine_into_linear
from ..validation import check_bool, check_choice, check_float, check_int, check_size_2d
from .arch import DEIT_ARCHS, DeiTArch
from .attention import SimplifiedLinearAttention, TokenMixer
from .base_backbone import SLABBackbone
from .embed import pad_to_multiple
from .key_conversion import convert_deit
from .mlp import Mlp
from .pos_embed import resize_pos_embed
from .shapes import ceil_div, symbolic_sizes

HW = Tuple[int, int]
StateDict = Dict[str, torch.Tensor]
LN_EPS = 1e-6  # the LayerNorm eps of the release's LinearNorm in the DeiT family
ATTENTIONS = ('softmax', 'sla')
NORMS = ('PRepBN', 'RepBN')
OUT_TYPES = ('cls_token', 'avg_featmap', 'featmap')


def build_deit_norm(norm: str, channels: int, deploy: bool = False) -> nn.Module:
    """The family's norm: ``'PRepBN'`` (LayerNorm eps 1e-6 + RepBN) or ``'RepBN'``;
    ``deploy=True``: its folded form (the per-channel affine map)."""
    if norm == 'PRepBN':
        return PRepBN(channels, ln_eps=LN_EPS, deploy=deploy)
    return RepBN(channels, deploy=deploy)


class MultiheadSoftmaxAttention(TokenMixer):
    """DeiT's global softmax attention: one ``qkv`` Linear(C, 3C) giving [q | k | v] (heads
    contiguous chunks of head_dim), scaled dot-product softmax attention (scale
    head_dim ** -0.5), ``proj``. ``mix`` ignores ``hw`` (any token set, class token
    included) and ``mask``."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        name = type(self).__name__
        check_int(name, 'embed_dims', embed_dims, min=1)
        check_int(name, 'num_heads', num_heads, min=1)
        if embed_dims % num_heads:
            raise ValueError(f'{name}: embed_dims {embed_dims} is not divisible by num_heads '
                             f'{num_heads}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.attn_drop = check_float(name, 'attn_drop', attn_drop, min=0, max=1)
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(check_float(name, 'proj_drop', proj_drop, min=0, max=1))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token projection ``(B, N, C) -> (B, N, 3C)`` laid out as [q | k | v]."""
        return self.qkv(x)

    def mix(self, qkv: torch.Tensor, hw: HW, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, _ = qkv.shape
        heads, d = self.num_heads, self.embed_dims // self.num_heads
        q, k, v = qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B,h,N,d)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        return out.transpose(1, 2).reshape(b, n, self.embed_dims)

    def pad_qkv(self) -> Optional[torch.Tensor]:
        return self.qkv.bias

    def fold_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.qkv = fold_affine_into_linear(self.qkv, scale, shift)


class DeiTPatchEmbed(nn.Module):
    """``(B, C_in, H, W) -> (B, H'*W', C)`` tokens and ``(H', W')``: the image zero-padded
    right / bottom to a multiple of the patch size (as mmcv's ``PatchEmbed`` with
    ``padding='corner'``; a no-op for the release's 224x224), then the patch conv. No norm
    follows it in the DeiT family."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, HW]:
        x = pad_to_multiple(x, self.patch_size, (2, 3))
        # channels-last conv: its output is the token-major (B, H*W, C) layout, no copy
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        b, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w, c), (h, w)


class SLABDeiTBlock(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)). ``attention``: ``'softmax'`` or ``'sla'``
    (over the ``hw`` token grid; its positional encoding is made for ``pos_grid``)."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float,
                 attention: str,
                 norm: str,
                 pos_grid: HW,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 deploy: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.Identity() if deploy else build_deit_norm(norm, embed_dims)
        self.attn: TokenMixer
        if attention == 'sla':
            self.attn = SimplifiedLinearAttention(embed_dims, num_heads, pos_grid, 'qkv',
                                                  qkv_bias or deploy, drop)
        else:
            self.attn = MultiheadSoftmaxAttention(embed_dims, num_heads, qkv_bias or deploy,
                                                  attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.Identity() if deploy else build_deit_norm(norm, embed_dims)
        self.mlp = Mlp(embed_dims, int(embed_dims * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def switch_to_deploy(self) -> None:
        """Fold norm1 into the attention's ``qkv`` and norm2 into ``mlp.fc1`` (exact)."""
        if not isinstance(self.norm1, (PRepBN, RepBN)):
            return
        self.attn.fold_input_affine(*self.norm1.affine())
        self.mlp.fc1 = fold_affine_into_linear(self.mlp.fc1, *self.norm2.affine())
        self.norm1 = nn.Identity()
        self.norm2 = nn.Identity()


@MODELS.register_module()
class SLABDeiT(SLABBackbone):
    """The SLAB release's DeiT family: DeiT-PRepBN / DeiT-RepBN (``attention='softmax'``,
    class token) and SLAB-DeiT (``attention='sla'``, no class token, token mean).

    For mmpretrain's ``ImageClassifier`` (``neck=None``, ``LinearClsHead``) ``forward``
    returns one ``(B, C)`` tensor per ``out_indices`` entry; with ``out_type='featmap'``
    one ``(B, C, H/16, W/16)`` map each (mmseg's ViT-style decode heads).

    Args:
        arch: ``'tiny' | 'small' | 'base'`` (also ``'deit-tiny'`` ...; :data:`~.arch.
            DEIT_ARCHS`: 192 / 384 / 768 channels, 12 blocks, 3 / 6 / 12 heads), a dict of
            ``embed_dims``, ``depth``, ``num_heads`` (and ``mlp_ratio``, default 4) or a
            :class:`~.arch.DeiTArch`; explicit ``embed_dims`` ... override the preset.
        attention: ``'softmax'`` (DeiT-PRepBN / -RepBN) or ``'sla'`` (SLAB-DeiT).
        norm: ``'PRepBN'`` (the release's LinearNorm: DeiT-S-PRepBN, SLAB-DeiT) or
            ``'RepBN'`` (DeiT-T-RepBN), for every norm of the blocks and the final norm.
        pretrain_img_size: the image size the position tables (``pos_embed``, SLA's P) are
            made for (224: a 14x14 token grid); a multiple of ``patch_size``. At run time
            both are resized bilinearly (align_corners=False) to every input's token
            grid; a checkpoint's tables made for another grid are resized on loading.
        patch_size: of the patch conv (16). An input whose size is not a multiple of it is
            zero-padded right / bottom first (the token grid is ``ceil(H / patch_size) x
            ceil(W / patch_size)``).
        out_indices: blocks whose output ``forward`` returns (-1: the last).
        out_type: ``'cls_token'`` (the class token; DeiT-PRepBN / -RepBN), ``'avg_featmap'``
            (the mean of the patch tokens; SLAB-DeiT) or ``'featmap'`` (the patch tokens as a
            ``(B, C, H', W')`` map). Default: ``'cls_token'`` with a class token, else
            ``'avg_featmap'``.
        with_cls_token: prepend the class token (default: True for ``'softmax'``; SLA mixes
            a token grid and takes none).
        final_norm: apply the final norm to the last block's output (the release does; an
            output of an earlier block is never normalised, as in mmpretrain).
        qkv_bias / drop_rate / attn_drop_rate / drop_path_rate: as in the release (DeiT's
            recipe: drop path 0).
        frozen_stages: -1 nothing; 0 the stem (patch conv, class token, position table and
            the dropout after it); ``k >= 1`` the stem and blocks ``0..k-1``; ``depth`` also
            the final norm (as mmpretrain's ``VisionTransformer``).
        norm_eval: keep RepBN's BatchNorms in eval mode while training (default False: a
            classifier trains them; True for small per-GPU batches in dense prediction).
        with_cp: activation checkpointing of every block.
        deploy: build the re-parameterized structure (every norm folded, see
            :meth:`switch_to_deploy`) so a folded checkpoint loads strictly.
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` accepts the released DeiT
            files as they are (see :meth:`convert_checkpoint`).
    """
    arch_zoo = DEIT_ARCHS

    def __init__(self,
                 arch: Union[str, Dict[str, Any], DeiTArch] = 'tiny',
                 embed_dims: Optional[int] = None,
                 depth: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: Optional[float] = None,
                 attention: str = 'softmax',
                 norm: str = 'PRepBN',
                 pretrain_img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: Optional[str] = None,
                 with_cls_token: Optional[bool] = None,
                 final_norm: bool = True,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        preset = DeiTArch.resolve(name, self.arch_zoo, arch, embed_dims=embed_dims, depth=depth,
                                  num_heads=num_heads, mlp_ratio=mlp_ratio)
        attention = check_choice(name, 'attention', attention, ATTENTIONS)
        norm = check_choice(name, 'norm', norm, NORMS)
        if with_cls_token is None:
            with_cls_token = attention == 'softmax'
        self.with_cls_token = check_bool(name, 'with_cls_token', with_cls_token)
        if attention == 'sla' and with_cls_token:
            raise ValueError(f"{name}: attention='sla' mixes the tokens of the patch grid (its "
                             'positional encoding and depthwise conv are laid out on it) and '
                             'takes no class token: set with_cls_token=False (SLAB-DeiT reads '
                             "the token mean, out_type='avg_featmap')")
        if out_type is None:
            out_type = 'cls_token' if with_cls_token else 'avg_featmap'
        self.out_type = check_choice(name, 'out_type', out_type, OUT_TYPES)
        if out_type == 'cls_token' and not with_cls_token:
            raise ValueError(f"{name}: out_type='cls_token' needs with_cls_token=True; without "
                             "a class token use 'avg_featmap' or 'featmap'")
        self.final_norm = check_bool(name, 'final_norm', final_norm)
        patch_size = check_int(name, 'patch_size', patch_size, min=1)
        pretrain_img_size = check_size_2d(name, 'pretrain_img_size', pretrain_img_size,
                                          min=patch_size)
        if pretrain_img_size[0] % patch_size or pretrain_img_size[1] % patch_size:
            raise ValueError(f'{name}: pretrain_img_size={pretrain_img_size} is not a multiple '
                             f'of patch_size={patch_size}: the position tables are made for a '
                             'whole grid of patches')
        self.set_common_options(preset.depth, in_channels=in_channels, out_indices=out_indices,
                                frozen_stages=frozen_stages, drop_rate=drop_rate,
                                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                                qkv_bias=qkv_bias, norm_eval=norm_eval, with_cp=with_cp,
                                deploy=deploy)
        self.arch = preset
        self.arch_settings = dict(preset.as_dict(), attention=attention, norm=norm,
                                  with_cls_token=with_cls_token)
        self.with_cp = with_cp
        c = self.embed_dims = preset.embed_dims
        self.pos_grid = (pretrain_img_size[0] // patch_size, pretrain_img_size[1] // patch_size)
        self.num_extra_tokens = 1 if with_cls_token else 0

        self.patch_embed = DeiTPatchEmbed(self.in_channels, c, patch_size)
        if with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_extra_tokens + self.pos_grid[0] * self.pos_grid[1], c))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, preset.depth).tolist()
        self.blocks = nn.ModuleList([
            SLABDeiTBlock(c, preset.num_heads, preset.mlp_ratio, attention, norm, self.pos_grid,
                          qkv_bias, drop_rate, attn_drop_rate, dpr[i], deploy)
            for i in range(preset.depth)
        ])
        self.norm = build_deit_norm(norm, c, deploy) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self.check_input(x, self.patch_embed.proj.weight.dtype)
        if not symbolic_sizes() and x.shape[0] == 0:
            if self.out_type == 'featmap':
                return self.empty_outputs(x)
            return tuple(x.new_zeros(0, self.embed_dims) for _ in self.out_indices)
        x, hw = self.patch_embed(x)
        if self.with_cls_token:
            x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.resized_pos_embed(hw).to(x.dtype))
        outs: List[torch.Tensor] = []
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
            if i == last:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, hw))
            if i >= max(self.out_indices):
                break
        return tuple(outs)

    def _format_output(self, x: torch.Tensor, hw: HW) -> torch.Tensor:
        if self.out_type == 'cls_token':
            return x[:, 0]
        tokens = x[:, self.num_extra_tokens:]
        if self.out_type == 'avg_featmap':
            return tokens.mean(dim=1)
        return tokens.reshape(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()

    def resized_pos_embed(self, hw: HW) -> torch.Tensor:
        """``pos_embed`` for a ``hw`` token grid: the patch entries resized bilinearly, the
        class token's entry as it is."""
        extra = self.num_extra_tokens
        if not extra:
            return resize_pos_embed(self.pos_embed, self.pos_grid, hw)
        if not symbolic_sizes() and tuple(hw) == self.pos_grid:
            return self.pos_embed
        return torch.cat([self.pos_embed[:, :extra],
                          resize_pos_embed(self.pos_embed[:, extra:], self.pos_grid, hw)], dim=1)

    def feature_shapes(self, h: int, w: int) -> List[Tuple[int, HW]]:
        p = self.patch_embed.patch_size
        return [(self.embed_dims, (ceil_div(h, p), ceil_div(w, p))) for _ in self.out_indices]

    def init_weights(self) -> None:
        """The release's init (the class token truncated-normal, std 0.02, as timm's
        ViT), then ``init_cfg`` (see :meth:`SLABBackbone.init_weights`)."""
        if self._pretrained_cfg() is None and self.with_cls_token:
            trunc_normal_(self.cls_token, std=.02)
        super().init_weights()

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: List[nn.Module] = [self.patch_embed, self.pos_drop,
                                 *self.blocks[:self.frozen_stages]]
        if self.frozen_stages == len(self.blocks):
            mods.append(self.norm)
        return mods

    def frozen_parameters(self) -> List[nn.Parameter]:
        if self.frozen_stages < 0:
            return []
        return [self.pos_embed] + ([self.cls_token] if self.with_cls_token else [])

    def switch_to_deploy(self) -> None:
        """Fold every block's norms into the adjacent Linear layers and turn the final norm
        into its affine map (exact; see :meth:`SLABBackbone.switch_to_deploy`)."""
        if self.deploy:
            return
        super().switch_to_deploy()
        if isinstance(self.norm, (PRepBN, RepBN)):
            self.norm.switch_to_deploy()

    def convert_checkpoint(self, state_dict: StateDict) -> StateDict:
        """A release (or mmslab) DeiT-family state dict -> this backbone's entries
        (:func:`~.key_conversion.convert_deit`), what ``init_cfg``'s ``Pretrained`` loads.

        The classifier ``head.*`` is left out (logged with the release-only buffers); so
        are ``cls_token`` without a class token (SLAB-DeiT files have it, unused) and the
        final ``norm.*`` with ``final_norm=False``. ``pos_embed`` loses its class-token
        entry without a class token (as mmpretrain's ViT) and is resized bilinearly to
        ``pretrain_img_size``'s grid when it was made for another one."""
        sd = {k: v for k, v in convert_deit(state_dict).items() if not k.startswith('head.')}
        left_out = []
        if not self.with_cls_token and 'cls_token' in sd:
            left_out.append('cls_token')
        if not self.final_norm:
            left_out += [k for k in sd if k.startswith('norm.')]
        for k in left_out:
            del sd[k]
        if 'pos_embed' in sd:
            sd['pos_embed'] = self._checkpoint_pos_embed(sd['pos_embed'])
        if left_out:
            print_log(f'{type(self).__name__}: left out checkpoint entries this backbone does '
                      f'not have: {left_out}', logger=MMLogger.get_current_instance())
        return sd

    def _checkpoint_pos_embed(self, value: torch.Tensor) -> torch.Tensor:
        """A checkpoint's ``(1, [1 +] n*n, C)`` ``pos_embed`` fitted to this backbone."""
        name = type(self).__name__
        if value.dim() != 3 or value.shape[-1] != self.embed_dims:
            return value  # the loader reports the shape mismatch
        n = value.shape[1]
        extra = 0 if math.isqrt(n) ** 2 == n else 1
        side = math.isqrt(n - extra)
        if side * side != n - extra:
            raise ValueError(f'{name}: checkpoint pos_embed of {n} entries is neither a square '
                             'grid nor a class token + a square grid')
        if extra and not self.num_extra_tokens:
            value = value[:, 1:]  # the class token's entry: this backbone has no class token
        elif self.num_extra_tokens and not extra:
            raise ValueError(f'{name}: the checkpoint pos_embed ({n} entries) has no class-token '
                             'entry (a SLAB-DeiT file): build the backbone with '
                             "with_cls_token=False (out_type 'avg_featmap' or 'featmap')")
        if (side, side) == self.pos_grid:
            return value
        print_log(f'{name}: resized pos_embed from a {side}x{side} to a {self.pos_grid[0]}x'
                  f'{self.pos_grid[1]} grid', logger=MMLogger.get_current_instance())
        cls_part, grid = value[:, :self.num_extra_tokens], value[:, self.num_extra_tokens:]
        grid = resize_pos_embed(grid.float(), (side, side), self.pos_grid).to(value.dtype)
        return torch.cat([cls_part, grid], dim=1)
