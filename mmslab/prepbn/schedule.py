"""Setting the PRepBN schedule's ``lam`` on a whole model (what ``PRepBNHook`` calls)."""
import torch.nn as nn

from .norm import PRepBN


def prepbn_modules(model: nn.Module):
    """Every PRepBN of ``model`` that still has a schedule (not in its deploy form)."""
    return [m for m in model.modules() if isinstance(m, PRepBN) and not m.deploy]


def set_prepbn_lam(model: nn.Module, lam: float) -> int:
    """Set ``lam`` of every PRepBN in ``model``, wherever it sits (a SLAB backbone, a norm
    built from ``norm_cfg=dict(type='PRepBN')``, one made by
    :func:`~mmslab.prepbn.convert_layernorm_to_prepbn`); return how many there are.
    PRepBNs in their deploy form have no schedule and are not counted."""
    norms = prepbn_modules(model)
    for m in norms:
        m.lam = lam
    return len(norms)
