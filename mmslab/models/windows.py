"""Swin's windows as index arithmetic: pad + roll + partition (and the inverse) as one row
gather each, and the shifted-window mask.

Conventions (docs/method.md, "Windows"): a ``H x W`` map is zero-padded at its right /
bottom to whole windows, shifted blocks roll it by ``-shift`` before partitioning and by
``+shift`` after reversing, and windows are taken row-major over the padded map.

Everything here is computed from ``arange`` with integer ``//`` and ``%`` on 1-D index
tensors, never by reshaping a map into ``(B, nH, ws, nW, ws, C)`` windows: merging the
window-count axes of such a view back into the batch makes torch's reshape ask whether a
count is 1 (a view or a copy?), which ``torch.export`` and ``torch.compile(dynamic=True)``
turn into a guard on the input size (a graph valid only for maps of one window, or only
for maps of several). The index tensors are tiny (one entry per padded token); the same
function serves the reference form (computed per call, sizes may be symbolic) and the CPU
inference path (:func:`window_gather_index`, cached per size).
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch

from .shapes import ceil_div


def _mod(a: torch.Tensor, m) -> torch.Tensor:
    """``a % m`` of a non-negative index tensor and a (maybe symbolic) size, written
    ``a - a // m * m``: the ONNX translation of torch.export graphs (onnxscript) takes the
    divisor of ``tensor % int`` only as a Python number."""
    return a - a // m * m


def _window_coords(nh, nw, ws: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column, in the padded ``nh*ws x nw*ws`` map, of every windowed token
    (windows row-major, tokens row-major inside a window): two 1-D tensors of
    ``nh * nw * ws * ws`` entries."""
    r = torch.arange(nh * nw * ws * ws, device=device)
    win, t = r // (ws * ws), r % (ws * ws)
    return (win // nw) * ws + t // ws, _mod(win, nw) * ws + t % ws


def window_index(h, w, ws: int, shift: int,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices that do pad-to-whole-windows, roll by ``-shift`` and partition in one gather
    (``h``, ``w``: Python or symbolic ints).

    Returns ``(gather, valid, inverse)``: windowed token ``i`` is token ``gather[i]`` of the
    ``h*w`` map where ``valid[i]``, else padding (``gather[i]`` is then 0); token ``t`` of
    the map is windowed token ``inverse[t]`` (un-partition, roll back, crop).
    """
    nh, nw = ceil_div(h, ws), ceil_div(w, ws)
    hp, wp = nh * ws, nw * ws
    y, x = _window_coords(nh, nw, ws, device)
    row, col = _mod(y + shift, hp), _mod(x + shift, wp)  # the rolled map's token (y, x)
    valid = (row < h) & (col < w)
    gather = torch.where(valid, row * w + col, 0)
    t = torch.arange(h * w, device=device)
    ry, rx = _mod(t // w + (hp - shift), hp), _mod(_mod(t, w) + (wp - shift), wp)
    inverse = ((ry // ws) * nw + rx // ws) * (ws * ws) + (ry % ws) * ws + rx % ws
    return gather, valid, inverse


def batched_index(index: torch.Tensor, b, n) -> torch.Tensor:
    """``index`` into each of ``b`` stacked length-``n`` sequences (rows of a flat
    ``(b * n, ...)`` tensor)."""
    return (torch.arange(b, device=index.device).unsqueeze(1) * n + index).flatten()


def shift_window_mask(hp, wp, ws: int, shift: int, device: torch.device,
                      batch=1) -> torch.Tensor:
    """Swin's shifted-window mask of a ``hp x wp`` padded map, for every window of each of
    ``batch`` images: ``(batch * nW, ws*ws, ws*ws)`` (the windows' order of
    :func:`window_index`), 0 within a region, -100 across. Regions along each axis:
    ``[0, n - ws)``, ``[n - ws, n - shift)``, ``[n - shift, n)``. (Built per image, not
    broadcast from ``(nW, ...)``: a symbolic window count that may be 1 never becomes an
    axis of its own, see the module docstring.)"""
    nh, nw = hp // ws, wp // ws
    r = torch.arange(batch * nh * nw * ws * ws, device=device)
    win, t = _mod(r // (ws * ws), nh * nw), r % (ws * ws)
    y, x = (win // nw) * ws + t // ws, _mod(win, nw) * ws + t % ws
    label = ((y >= hp - ws).long() + (y >= hp - shift).long()) * 3 \
        + (x >= wp - ws).long() + (x >= wp - shift).long()
    label = label.view(batch * nh * nw, ws * ws)
    return (label.unsqueeze(1) != label.unsqueeze(2)).float() * -100.0


@lru_cache(maxsize=32)
def window_gather_index(h: int, w: int, ws: int, shift: int,
                        device: torch.device
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """:func:`window_index` for Python ints, cached (the CPU inference path's form).

    Returns ``(gather, padded, inverse)``: ``padded`` marks the windowed positions that
    are padding (their ``gather`` is 0), or is None where nothing is padded.
    """
    with torch.inference_mode(False):  # cached: must not be inference tensors
        gather, valid, inverse = window_index(h, w, ws, shift, device)
        return gather, None if bool(valid.all()) else ~valid, inverse
