"""Turning LayerNorm models into PRepBN ones: modules (:func:`convert_layernorm_to_prepbn`,
for code that hard-codes ``nn.LayerNorm``, in the spirit of torch's
``convert_sync_batchnorm``) and checkpoints (:func:`layernorm_keys_to_prepbn`).

Where a module builds its norms from a ``norm_cfg``, ``norm_cfg=dict(type='PRepBN', ...)``
is the way; the converter is for the norms a config cannot reach."""
import re
from typing import Any, Dict, List, MutableMapping, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..validation import check_float
from .keymap import (layernorm_entry_problems, load_layernorm_entries,
                     repbn_twin_of_layernorm)
from .norm import PRepBN


def _convertible(m: nn.Module) -> Optional[str]:
    """Why the LayerNorm ``m`` cannot become a PRepBN (None: it can)."""
    if len(m.normalized_shape) != 1:
        return f'normalises over {tuple(m.normalized_shape)}, not one channel dim'
    return None


def convert_layernorm_to_prepbn(module: nn.Module,
                                include: Optional[str] = None,
                                exclude: Optional[str] = None,
                                lam: float = 1.0,
                                bn_eps: float = 1e-5,
                                momentum: Optional[float] = 0.1) -> Tuple[nn.Module, List[str]]:
    """Replace every ``nn.LayerNorm`` of ``module`` over one (channel) dim by a
    :class:`PRepBN` that is the same LayerNorm at ``lam = 1``: same eps, its weight and bias
    copied (ones / zeros for a LayerNorm without affine), the RepBN branch started as its
    BatchNorm twin (:func:`~mmslab.prepbn.keymap.repbn_twin_of_layernorm`), on the same
    device and dtype, the same ``requires_grad``, and the module's train / eval mode.

    ``include`` / ``exclude``: regular expressions on the module names
    (``re.search``): only names that match ``include`` (default: all) and do not match
    ``exclude`` are converted. LayerNorms inside PRepBNs (their LayerNorm branch) are
    never touched. ``lam`` is the new norms' starting value (1: the converted model
    computes what the original computed; ``PRepBNHook`` schedules it from there).

    Returns the converted module (a new PRepBN if ``module`` itself is a LayerNorm) and the
    names converted, and logs them. Raises ``ValueError`` -- converting nothing -- when no
    LayerNorm matches (for example when the model was converted already) or a matching
    one cannot be converted (a LayerNorm over several dims).
    """
    lam = check_float('convert_layernorm_to_prepbn', 'lam', lam, min=0, max=1)
    pattern_in = re.compile(include) if include is not None else None
    pattern_ex = re.compile(exclude) if exclude is not None else None
    found: List[Tuple[str, nn.LayerNorm]] = []

    def walk(m: nn.Module, name: str) -> None:
        if isinstance(m, PRepBN):
            return
        if isinstance(m, nn.LayerNorm):
            if ((pattern_in is None or pattern_in.search(name))
                    and not (pattern_ex is not None and pattern_ex.search(name))):
                found.append((name, m))
            return
        for child_name, child in m.named_children():
            walk(child, f'{name}.{child_name}' if name else child_name)

    walk(module, '')
    if not found:
        n_prepbn = sum(isinstance(m, PRepBN) for m in module.modules())
        raise ValueError(
            f'convert_layernorm_to_prepbn: {type(module).__name__} has no nn.LayerNorm to '
            f'convert (include={include!r}, exclude={exclude!r}); it has {n_prepbn} PRepBN'
            + (' -- converted already?' if n_prepbn else ''))
    bad = [f'{name or "the root"}: {why}' for name, m in found
           if (why := _convertible(m)) is not None]
    if bad:
        raise ValueError('convert_layernorm_to_prepbn: cannot convert ' + '; '.join(bad) +
                         ' (use exclude= to leave them as they are); nothing converted')
    new_root = module
    for name, ln in found:
        new = _prepbn_like(ln, lam, bn_eps, momentum)
        if not name:
            new_root = new
            continue
        parent_name, _, attr = name.rpartition('.')
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, new)
    names = [name or '<root>' for name, _ in found]
    print_log(f'convert_layernorm_to_prepbn: {len(names)} LayerNorm -> PRepBN (lam={lam:g}): '
              + ', '.join(names), logger='current')
    return new_root, names


@torch.no_grad()
def _prepbn_like(ln: nn.LayerNorm, lam: float, bn_eps: float,
                 momentum: Optional[float]) -> PRepBN:
    channels = ln.normalized_shape[0]
    norm = PRepBN(channels, eps=ln.eps, bn_eps=bn_eps, momentum=momentum)
    ref = ln.weight
    if ref is not None:
        norm.to(device=ref.device, dtype=ref.dtype)
        norm.norm1.weight.copy_(ln.weight)
        if ln.bias is not None:
            norm.norm1.bias.copy_(ln.bias)
        twin = repbn_twin_of_layernorm(ln.weight, ln.bias, '')
        norm.norm2.load_state_dict(dict(norm.norm2.state_dict(), **twin))
        for p in norm.parameters():
            p.requires_grad_(ref.requires_grad)
    else:  # no affine: the twin of weight 1, bias 0
        norm.norm2.alpha.data.zero_()
    norm.lam = lam
    norm.train(ln.training)
    return norm


def layernorm_keys_to_prepbn(state_dict: MutableMapping[str, Any], model: nn.Module,
                             prefix: str = '') -> Dict[str, Any]:
    """A new state dict for ``model`` from a LayerNorm model's ``state_dict`` (which is not
    changed): every PRepBN of ``model`` whose prefix holds a LayerNorm's entries gets them
    in its LayerNorm branch, ``lam = 1`` and the RepBN branch as its twin. ``prefix``
    is what the file's keys carry before ``model``'s names (e.g. ``'backbone.'``).
    Checks every norm first: raises ``ValueError`` listing every entry that is not a
    LayerNorm's (nothing returned). Loading does the same on the fly
    (:mod:`mmslab.prepbn.keymap`); this is the offline form."""
    out = dict(state_dict)
    norms = [(f'{prefix}{name}.' if name else prefix, m) for name, m in model.named_modules()
             if isinstance(m, PRepBN) and not m.deploy]
    problems = [p for name, m in norms for p in layernorm_entry_problems(out, name, m.channels)]
    if problems:
        raise ValueError('cannot map this checkpoint onto the PRepBN model: ' +
                         '; '.join(problems))
    for name, m in norms:
        load_layernorm_entries(m, out, name)
    return out
