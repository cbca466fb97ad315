"""Swin's window helpers: partition / reverse, the shifted-window mask, and the cached row
gather that does pad + roll + partition in one step (the CPU inference path's form).

Conventions (docs/method.md, "Windows"): a ``H x W`` map is zero-padded at its right /
bottom to whole windows, shifted blocks roll it by ``-shift`` before partitioning and by
``+shift`` after reversing, and windows are taken row-major over the padded map.
"""
from functools import lru_cache
from typing import Tuple

import torch


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
    """Swin's shifted-window mask ``(nW, ws*ws, ws*ws)`` of a ``hp x wp`` padded map: 0
    within a region, -100 across. Regions along each axis: ``[0, n - ws)``,
    ``[n - ws, n - shift)``, ``[n - shift, n)`` (built from comparisons: traceable)."""
    def region(n: int) -> torch.Tensor:
        r = torch.arange(n, device=device)
        return (r >= n - ws).long() + (r >= n - shift).long()

    img = region(hp).unsqueeze(1) * 3 + region(wp).unsqueeze(0)              # (hp, wp)
    win = window_partition(img.view(1, hp, wp, 1), ws).squeeze(-1)            # (nW, ws*ws)
    return (win.unsqueeze(1) != win.unsqueeze(2)).float() * -100.0


@lru_cache(maxsize=32)
def window_gather_index(h: int, w: int, ws: int, shift: int,
                        device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices that do pad-to-whole-windows, roll by ``-shift`` and partition in one gather.

    Returns ``(gather, pad, inverse)``: windowed token ``i`` is token ``gather[i]`` of the
    ``h*w`` map (``pad`` lists the windowed positions that are padding, their ``gather`` is
    0); token ``t`` of the map is windowed token ``inverse[t]`` (un-partition, roll back,
    crop).
    """
    hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
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
