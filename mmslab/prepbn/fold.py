"""Folding the converged PRepBN / RepBN norms of any model for inference.

Every PRepBN (``lam = 0``) and RepBN is, in eval mode, the per-channel affine map
``scale * x + shift``; :func:`fold_norms` turns each into that map in place
(``switch_to_deploy``, the module keeps its name and place), checking every norm first,
so a model that cannot be folded whole is left exactly as it was. The SLAB backbones
go further and fold the map into the adjacent Linear / Conv2d
(``SLABBackbone.switch_to_deploy``): a norm built from a third-party ``norm_cfg`` feeds
layers this package does not own (mmcv's ``MultiheadAttention`` in_proj, a
spatial-reduction conv with padding, a residual branch), so the affine map stays its own
elementwise op there.
"""
from typing import List, Tuple

import torch.nn as nn

from .norm import PRepBN, RepBN


def foldable_norms(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The outermost PRepBN / RepBN modules of ``model`` not yet in their deploy form
    (the RepBN branch of a PRepBN folds with it), with their names."""
    found: List[Tuple[str, nn.Module]] = []

    def walk(m: nn.Module, name: str) -> None:
        if isinstance(m, (PRepBN, RepBN)):
            if not m.deploy:
                found.append((name, m))
            return
        for child_name, child in m.named_children():
            walk(child, f'{name}.{child_name}' if name else child_name)

    walk(model, '')
    return found


def check_norms_foldable(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """:func:`foldable_norms`, or ``ValueError`` naming every PRepBN with ``lam != 0``."""
    norms = foldable_norms(model)
    mixing = [f'{name or "<root>"} (lam={float(m.lam):g})' for name, m in norms
              if isinstance(m, PRepBN) and float(m.lam) != 0.0]
    if mixing:
        raise ValueError(
            f'cannot fold {type(model).__name__}: {len(mixing)} PRepBN still mix in '
            f'LayerNorm: {", ".join(mixing[:5])}{" ..." if len(mixing) > 5 else ""}. Only a '
            'converged PRepBN (lam = 0) is an affine map: train until the PRepBNHook '
            'schedule reaches lam = 0, or fine-tune with lam = 0 (PRepBNHook r0=0.0).')
    return norms


def fold_norms(model: nn.Module) -> List[str]:
    """Put ``model`` in eval mode and turn every converged PRepBN / RepBN into its exact
    affine map. Returns the names folded (empty if there is none left to fold). Raises
    (model unchanged, in its mode) if any PRepBN has ``lam != 0``."""
    norms = check_norms_foldable(model)
    model.eval()
    for _, m in norms:
        m.switch_to_deploy()
    return [name or '<root>' for name, _ in norms]
