"""Padded tokens out of RepBN's batch statistics.

DETR-family detectors pad the images of a batch to one size, and their encoders take a
``key_padding_mask`` (True at padded positions) that masks those tokens as attention
keys; every token, padded or not, is still normalised. A RepBN there would take its batch
statistics over the padded positions too: measured with ``tools/prepbn_padding.py``
(docs/prepbn.md, "Padded tokens"), 12-45 % padded tokens move the statistics by up to 0.3
standard deviations and the variance by 5-30 %.

:func:`ignore_padding` registers, on every module whose ``forward`` takes a
``key_padding_mask`` and holds RepBN / PRepBN norms (the outermost such module: an
encoder, not each of its layers), a forward pre-hook that hands the mask to those norms
for the duration of the call; in training they then compute the statistics (and update
the running ones) over the unpadded tokens only. Eval mode uses the running statistics and
needs no mask. ``PRepBNHook(ignore_padding=True)`` (the default) calls it before training.
"""
import inspect
from typing import List

import torch.nn as nn

from .norm import PRepBN, RepBN

MASK_ARG = 'key_padding_mask'


def _takes_mask(m: nn.Module) -> bool:
    try:
        return MASK_ARG in inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        return False


def _norms(m: nn.Module) -> List[RepBN]:
    return [n for n in m.modules() if isinstance(n, RepBN) and not n.deploy]


def padding_aware_modules(model: nn.Module) -> List[nn.Module]:
    """The outermost modules of ``model`` whose ``forward`` takes ``key_padding_mask``
    and that hold trainable RepBN / PRepBN norms."""
    found: List[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if not isinstance(m, (PRepBN, RepBN)) and _takes_mask(m) and _norms(m):
            found.append(m)
            return
        for child in m.children():
            walk(child)

    walk(model)
    return found


def _give_mask(module: nn.Module, args, kwargs) -> None:
    # the norms are found from the module called (not captured when registering): a copy
    # of the model (deepcopy: EMA, the tools) hands the mask to its own norms
    mask = kwargs.get(MASK_ARG)
    for n in _norms(module):
        n.token_mask = mask


def _take_mask(module: nn.Module, args, kwargs, output) -> None:
    for n in _norms(module):
        n.token_mask = None


def ignore_padding(model: nn.Module) -> int:
    """Make the RepBN statistics of every padding-aware module of ``model`` (see the
    module docstring) ignore padded tokens. Idempotent; returns how many modules are
    padding-aware."""
    modules = padding_aware_modules(model)
    for m in modules:
        if getattr(m, '_mmslab_ignores_padding', False):
            continue
        m.register_forward_pre_hook(_give_mask, with_kwargs=True)
        m.register_forward_hook(_take_mask, with_kwargs=True, always_call=True)
        m._mmslab_ignores_padding = True
    return len(modules)
