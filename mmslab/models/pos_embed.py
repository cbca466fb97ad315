"""Resizing of position tables: at run time to the input's token grid, and when a
checkpoint's tables were trained for another grid / window (docs/method.md, "Position
tables").

* :func:`resize_pos_embed`: a ``(1, H*W, C)`` table (PVT's ``pos_embed``, SLA's
  ``positional_encoding``) to another grid, bilinearly (align_corners=False, as mmdet's
  PVT).
* :func:`resize_checkpoint_table`: a checkpoint's table to the model's size: square
  position tables bilinearly (as above), Swin's ``relative_position_bias_table``
  bicubically (as the release's detection loader).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .shapes import symbolic_sizes

HW = Tuple[int, int]

#: the names (key endings) of the tables :func:`resize_checkpoint_table` resizes
RESIZABLE_TABLES = ('positional_encoding', 'pos_embed', 'relative_position_bias_table')


def resize_pos_embed(pos: torch.Tensor, src_hw: HW, dst_hw: HW) -> torch.Tensor:
    """Resize a ``(1, H*W, C)`` position table from grid ``src_hw`` to ``dst_hw``
    (bilinear over the 2-D grid, align_corners=False, as mmdet's PVT does)."""
    if not symbolic_sizes() and tuple(src_hw) == tuple(dst_hw):
        return pos  # (a traced / exported graph keeps the resize: it holds for every size)
    if pos.shape[1] != src_hw[0] * src_hw[1]:
        raise ValueError(f'position table of {pos.shape[1]} entries does not match its '
                         f'grid {src_hw[0]}x{src_hw[1]}')
    c = pos.shape[-1]
    # channels-last in and out: the result is a contiguous token-major (1, H*W, C) table
    grid = pos.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.contiguous(memory_format=torch.channels_last), size=tuple(dst_hw),
                         mode='bilinear', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], c)


def resize_checkpoint_table(key: str, value: torch.Tensor, target_shape: Sequence[int],
                            grid: Optional[HW] = None) -> torch.Tensor:
    """A checkpoint's table ``value`` (state-dict key ``key``) resized to the model's
    ``target_shape``, in float32, returned in ``value``'s dtype.

    * ``...relative_position_bias_table`` ``((2w-1)^2, heads)``: bicubic over the
      ``(2w-1) x (2w-1)`` grid;
    * a position table ``(1, n*n, C)`` (``pos_embed``, ``positional_encoding``): bilinear
      from its square ``n x n`` grid to the model's ``grid`` (required).

    Raises:
        ValueError: ``key`` is not a resizable table, a position table is not square or
            its ``grid`` is not given.
    """
    if key.endswith('relative_position_bias_table'):
        src, dst = math.isqrt(value.shape[0]), math.isqrt(target_shape[0])
        table = value.t().reshape(1, -1, src, src).float()
        table = F.interpolate(table, size=(dst, dst), mode='bicubic', align_corners=False)
        return table.reshape(-1, dst * dst).t().to(value.dtype)
    if not key.endswith(RESIZABLE_TABLES):
        raise ValueError(f'{key}: not a resizable table (one of {list(RESIZABLE_TABLES)})')
    if grid is None:
        raise ValueError(f'{key}: resizing a position table needs the target grid')
    src = math.isqrt(value.shape[1])
    if src * src != value.shape[1]:
        raise ValueError(f'{key}: cannot resize a non-square table of {value.shape[1]} entries')
    return resize_pos_embed(value.float(), (src, src), grid).to(value.dtype)
