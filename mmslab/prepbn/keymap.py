"""LayerNorm checkpoints into PRepBN models: the state-dict key map.

A PRepBN stands where a LayerNorm stood (same attribute name: mmcv's ``build_norm_layer``
names both ``ln<k>``), so a LayerNorm model's ``<prefix>weight`` / ``<prefix>bias`` are
found at the PRepBN's own prefix. They are its LayerNorm branch's
(``<prefix>norm1.weight`` / ``<prefix>norm1.bias``); ``lam`` becomes 1, so the loaded
PRepBN model computes exactly what the LayerNorm model computed. The RepBN branch, which
the file cannot have, starts as the LayerNorm's BatchNorm twin (:func:`repbn_twin_of_layernorm`:
the LayerNorm's affine, ``alpha = 0``, running statistics as initialised), so a strict
load succeeds and the schedule (``PRepBNHook``) fades LayerNorm into it from there.

:func:`load_layernorm_entries` does it while a module loads (any loader: ``init_cfg``
Pretrained, mmengine's ``load_checkpoint``, ``load_state_dict``), so mmdet's / mmseg's own
pretrained-weight paths load LayerNorm files into ``norm_cfg=dict(type='PRepBN')`` models
with no conversion step. An entry at the norm's prefix that is not a LayerNorm's of its
channels raises, naming the entry, before that norm loads anything.
:func:`mmslab.prepbn.layernorm_keys_to_prepbn` maps a whole file offline, checking every
norm first.
"""
from typing import Any, Dict, List, MutableMapping

import torch
import torch.nn as nn

#: the entries of an affine nn.LayerNorm (bias may be absent: ``bias=False``)
LAYERNORM_ENTRIES = ('weight', 'bias')
#: entries that say the source was a BatchNorm, not a LayerNorm
_BATCHNORM_ENTRIES = ('running_mean', 'running_var', 'num_batches_tracked')


def layernorm_entry_problems(state_dict: MutableMapping[str, Any], prefix: str,
                             channels: int) -> List[str]:
    """What makes the entries at ``prefix`` not a LayerNorm of ``channels`` channels that
    a PRepBN can load (empty: loadable, or no LayerNorm entries at all)."""
    here = [k[len(prefix):] for k in state_dict if k.startswith(prefix)
            and '.' not in k[len(prefix):]]
    problems = []
    bn = [k for k in here if k in _BATCHNORM_ENTRIES]
    if bn:
        problems.append(f'{prefix}{{{", ".join(bn)}}} are a BatchNorm\'s statistics, not a '
                        f'LayerNorm\'s entries')
    ln = [k for k in here if k in LAYERNORM_ENTRIES]
    if not ln:
        return problems
    if prefix + 'weight' not in state_dict:
        problems.append(f'{prefix}bias without {prefix}weight is not a LayerNorm')
    for k in ln:
        v = state_dict[prefix + k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (channels,):
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            problems.append(f'{prefix}{k} has shape {shape}, a LayerNorm of {channels} '
                            f'channels has ({channels},)')
    own = [k for k in state_dict if k.startswith(prefix + 'norm1.')
           or k.startswith(prefix + 'norm2.')]
    if own:
        problems.append(f'{prefix[:-1] or "the root"} has both LayerNorm entries ({", ".join(ln)}) and '
                        f'PRepBN entries ({own[0]}, ...): which to load is ambiguous')
    return problems


def load_layernorm_entries(norm: nn.Module, state_dict: Dict[str, Any], prefix: str) -> bool:
    """Rename a LayerNorm's entries at ``prefix`` of a loading ``state_dict`` (the loader's
    own copy) to the PRepBN ``norm``'s LayerNorm branch, set its ``lam`` to 1 and start the
    RepBN branch as the LayerNorm's twin (running statistics: ``norm``'s current ones). Returns whether there were LayerNorm
    entries. Raises ``ValueError`` (nothing renamed) for entries a PRepBN cannot load."""
    problems = layernorm_entry_problems(state_dict, prefix, norm.channels)
    if problems:
        raise ValueError(f'PRepBN({norm.channels}) at {prefix[:-1] or "the root"!r} cannot '
                         'load this checkpoint: ' + '; '.join(problems) + '. A PRepBN loads '
                         "a LayerNorm's weight / bias, or its own entries (norm1.*, "
                         'norm2.*, lam).')
    if prefix + 'weight' not in state_dict:
        return False
    for k in LAYERNORM_ENTRIES:
        if prefix + k in state_dict:
            state_dict[prefix + 'norm1.' + k] = state_dict.pop(prefix + k)
    for k, v in norm.norm2.state_dict(prefix=prefix + 'norm2.').items():
        state_dict[k] = v.clone()
    weight = state_dict[prefix + 'norm1.weight']
    bias = state_dict.get(prefix + 'norm1.bias')
    state_dict.update(repbn_twin_of_layernorm(weight, bias, prefix + 'norm2.'))
    state_dict[prefix + 'lam'] = torch.ones((), dtype=torch.float64)
    return True


def repbn_twin_of_layernorm(weight: torch.Tensor, bias, prefix: str) -> Dict[str, Any]:
    """The RepBN entries that start a PRepBN's BatchNorm branch as the LayerNorm's twin:
    the LayerNorm's affine as the BatchNorm's, and ``alpha = 0`` (no identity term: an
    identity would hand the next layer the unnormalised residual stream, which a
    LayerNorm-trained network never saw). Running statistics stay as initialised."""
    w = weight.detach().clone()
    return {prefix + 'bn.weight': w,
            prefix + 'bn.bias': (torch.zeros_like(w) if bias is None
                                 else bias.detach().clone()),
            prefix + 'alpha': torch.zeros(1, dtype=w.dtype)}
