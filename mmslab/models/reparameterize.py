"""Re-parameterization of whole models: fold every SLAB backbone's norms for inference."""
import torch.nn as nn

from .base_backbone import SLABBackbone


def reparameterize(model: nn.Module) -> int:
    """Call ``switch_to_deploy()`` on every SLAB backbone inside ``model`` (a detector,
    segmentor, wrapper or backbone) and put the model in eval mode. Returns how many
    backbones were folded; raises if there is none.

    Every backbone is checked first (:meth:`SLABBackbone.check_foldable`): a model that
    cannot be folded whole is left as it was (and in its training mode)."""
    backbones = [m for m in model.modules() if isinstance(m, SLABBackbone)]
    if not backbones:
        raise ValueError(f'{type(model).__name__} contains no SLAB backbone to re-parameterize')
    for m in backbones:
        m.check_foldable()
    model.eval()
    for m in backbones:
        m.switch_to_deploy()
    return len(backbones)
