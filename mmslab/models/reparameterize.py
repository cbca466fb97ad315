"""Re-parameterization of whole models: fold every SLAB backbone and every converged
PRepBN / RepBN elsewhere for inference."""
import torch.nn as nn

from ..prepbn.fold import check_norms_foldable, fold_norms
from .base_backbone import SLABBackbone


def reparameterize(model: nn.Module) -> int:
    """Fold ``model`` (a detector, segmentor, classifier, wrapper or single module) for
    inference and put it in eval mode; returns how many modules were folded.

    * every SLAB backbone: ``switch_to_deploy()``, its norms folded into the adjacent
      Linear / conv layers;
    * every other converged PRepBN (``lam = 0``) / RepBN -- a ``norm_cfg=dict(type=
      'PRepBN')`` of an mmdet / mmseg / mmpretrain module, or one made by
      :func:`~mmslab.prepbn.convert_layernorm_to_prepbn` -- becomes its exact per-channel
      affine map (:func:`~mmslab.prepbn.fold_norms`).

    Everything is checked first: a model with nothing to fold, or with a PRepBN at
    ``lam != 0``, raises ``ValueError`` and is left as it was (and in its training mode).
    """
    backbones = [m for m in model.modules() if isinstance(m, SLABBackbone) and not m.deploy]
    for m in backbones:
        m.check_foldable()
    others = _outside(model)
    norms = [n for o in others for n in check_norms_foldable(o)]
    if not backbones and not norms:
        raise ValueError(f'{type(model).__name__} has nothing to re-parameterize: no unfolded '
                         'SLAB backbone and no PRepBN / RepBN norm outside one')
    model.eval()
    for m in backbones:
        m.switch_to_deploy()
    for o in others:
        fold_norms(o)
    return len(backbones) + len(norms)


def _outside(model: nn.Module) -> list:
    """The largest sub-modules of ``model`` that contain no SLAB backbone (a SLAB
    backbone folds its own norms; the output norms of a folded one are part of its
    folded form)."""
    if isinstance(model, SLABBackbone):
        return []
    if not any(isinstance(m, SLABBackbone) for m in model.modules()):
        return [model]
    out = []
    for child in model.children():
        out.extend(_outside(child))
    return out
