"""Re-parameterization of whole models: fold every SLAB backbone's norms for inference."""
import copy
import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .backbone_utils import SLABBackbone


def reparameterize(model: nn.Module) -> int:
    """Call ``switch_to_deploy()`` on every SLAB backbone inside ``model`` (a detector,
    segmentor, wrapper or backbone) and put the model in eval mode. Returns how many
    backbones were folded; raises if there is none."""
    backbones = [m for m in model.modules() if isinstance(m, SLABBackbone)]
    if not backbones:
        raise ValueError(f'{type(model).__name__} contains no SLAB backbone to re-parameterize')
    model.eval()
    for m in backbones:
        m.switch_to_deploy()
    return len(backbones)


def build_model_from_config(config, cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the model of an mmdet / mmseg config (its custom_imports and default_scope)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings

    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


@torch.no_grad()
def deploy_checkpoint(config: str,
                      checkpoint: str,
                      out: str,
                      img_shape: Tuple[int, int] = (256, 320),
                      rtol: float = 1e-4,
                      cfg_options: Optional[dict] = None) -> float:
    """Re-parameterize a trained detector / segmentor checkpoint for inference.

    Loads ``checkpoint`` into the config's model, folds every SLAB backbone, checks that
    ``extract_feat`` on a random image is unchanged (max abs diff / max abs value <= rtol,
    both evaluated in float64),
    saves ``{'state_dict', 'meta'}`` to ``out`` and next to it ``<out stem>_config.py``
    (the config with ``backbone.deploy=True``, which loads the file strictly).
    Returns the measured relative difference. Never writes onto ``checkpoint``.
    """
    from mmengine.runner import load_checkpoint

    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise ValueError(f'refusing to overwrite the trained checkpoint {checkpoint}')
    model = build_model_from_config(config, cfg_options)
    ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    model.eval()
    x = torch.rand(1, 3, *img_shape) * 255
    x = model.data_preprocessor({'inputs': [x[0]]}, False)['inputs'].double()

    def features(m: nn.Module) -> Tuple[torch.Tensor, ...]:
        # float64 evaluation: measures the fold (and the folded weights' rounding to their
        # stored dtype), not float32 evaluation noise
        return copy.deepcopy(m).double().extract_feat(x)

    before = features(model)
    reparameterize(model)
    after = features(model)
    err = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
              for a, b in zip(before, after))
    if err > rtol:
        raise RuntimeError(f'folded model differs from the trained one by {err:.2e} (relative)'
                           f' > {rtol:g}: not saving {out}')
    os.makedirs(os.path.dirname(os.path.abspath(out)) or '.', exist_ok=True)
    meta = dict(ckpt.get('meta', {}), deployed_from=checkpoint, fold_relative_error=err)
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, out)
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.model.backbone.deploy = True
    cfg.model.backbone.init_cfg = None
    cfg.load_from = out
    cfg.dump(os.path.splitext(out)[0] + '_config.py')
    return err
