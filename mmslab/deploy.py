"""Folding a trained detector / segmentor checkpoint for inference (what tools/deploy.py
runs): build the config's model, load the checkpoint, fold every SLAB backbone and every
converged PRepBN / RepBN elsewhere (:func:`mmslab.models.reparameterize`), check the folded
features, and write the folded checkpoint with a config that loads it strictly
(:func:`folded_config`; checked by building it and loading the file before writing)."""
import copy
import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.utils import import_modules_from_strings

from .config import load_config
from .fileio import atomic_save, atomic_write_text, check_outputs
from .checkpoint_io import load_model_weights, read_checkpoint, unwrap_state_dict
from .models.reparameterize import reparameterize
from .validation import check_float, check_size_2d


def build_model_from_config(config: Union[str, Config],
                            cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the model of an mmdet / mmseg / mmpretrain config (its custom_imports and
    default_scope) as mmengine's Runner does: a top-level ``data_preprocessor`` (mmpretrain's
    ImageNet bases) is the model's unless the model names its own."""
    cfg = load_config(config, cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    return MODELS.build(model)


NORM_TYPES = ('PRepBN', 'RepBN')


def _deploy_norm_cfgs(node: Any) -> int:
    """Set ``deploy=True`` in every PRepBN / RepBN norm config under ``node``."""
    n = 0
    if isinstance(node, dict):
        if node.get('type') in NORM_TYPES:
            node['deploy'] = True
            n += 1
        for v in node.values():
            n += _deploy_norm_cfgs(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += _deploy_norm_cfgs(v)
    return n


def folded_config(cfg: Config, model: nn.Module) -> Config:
    """The config of ``model`` folded by :func:`~mmslab.models.reparameterize`: a SLAB
    backbone gets ``deploy=True``; every PRepBN / RepBN norm config (``norm_cfg=dict(type=
    'PRepBN', ...)`` anywhere in the model) gets ``deploy=True`` (the norm is built as its
    affine map); the backbone's ``init_cfg`` (pretrained weights) is dropped. ``cfg`` is
    not changed."""
    from .models.base_backbone import SLABBackbone
    cfg = copy.deepcopy(cfg)
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, SLABBackbone):
        cfg.model.backbone.deploy = True
    _deploy_norm_cfgs(cfg.model)
    if 'backbone' in cfg.model:
        cfg.model.backbone.init_cfg = None
    if cfg.model.get('pretrained') is not None:  # mmseg's EncoderDecoder(pretrained=...)
        cfg.model.pretrained = None
    return cfg


def config_is_folded(cfg: Config) -> bool:
    """Whether ``cfg`` builds a folded model (as :func:`folded_config` writes it)."""
    def deployed(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get('type') in NORM_TYPES and node.get('deploy', False):
                return True
            return any(deployed(v) for v in node.values())
        if isinstance(node, (list, tuple)):
            return any(deployed(v) for v in node)
        return False
    return bool(cfg.model.get('backbone', {}).get('deploy', False)) or deployed(cfg.model)


def deploy_outputs(out: str) -> Dict[str, str]:
    """The files :func:`deploy_checkpoint` writes for ``out``: the folded checkpoint and
    its config ``<out stem>_config.py``."""
    return {'folded checkpoint': out,
            'folded config (<out stem>_config.py)': os.path.splitext(out)[0] + '_config.py'}


@torch.no_grad()
def deploy_checkpoint(config: Union[str, Config],
                      checkpoint: str,
                      out: str,
                      img_shape: Tuple[int, int] = (256, 320),
                      rtol: float = 1e-4,
                      cfg_options: Optional[dict] = None) -> float:
    """Re-parameterize a trained detector / segmentor checkpoint for inference.

    Loads ``checkpoint`` into the config's model, folds every SLAB backbone and every
    converged PRepBN / RepBN (:func:`~mmslab.models.reparameterize`), checks that
    ``extract_feat`` on a random image is unchanged (max abs diff / max abs value <= rtol,
    both evaluated in float64),
    saves ``{'state_dict', 'meta'}`` to ``out`` and next to it ``<out stem>_config.py``
    (:func:`folded_config`: it builds the folded model and loads the file strictly --
    checked before anything is written).
    Returns the measured relative difference.

    Never writes onto an input: ``out`` and ``<out stem>_config.py`` must not be (or
    resolve to, through symlinks / hard links) ``config`` or ``checkpoint``. Both files
    are written atomically (an interrupted run leaves the old files or none).
    """
    name = 'deploy_checkpoint'
    img_shape = check_size_2d(name, 'img_shape', img_shape, min=1)
    rtol = check_float(name, 'rtol', rtol, min=0, min_open=True)
    outputs = deploy_outputs(out)
    check_outputs(outputs, {'config': config if isinstance(config, str) else None,
                            'trained checkpoint': checkpoint}, name)
    ckpt = read_checkpoint(checkpoint, map_location='cpu')
    unwrap_state_dict(ckpt, prefix='', source=checkpoint)  # a wrong file: said before building
    model = build_model_from_config(config, cfg_options)
    load_model_weights(model, ckpt, strict=True, source=checkpoint)
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
    meta = dict(ckpt.get('meta', {}), deployed_from=checkpoint, fold_relative_error=err)
    cfg = folded_config(load_config(config, cfg_options), model)
    cfg.load_from = out
    state_dict = model.state_dict()
    try:
        load_model_weights(build_model_from_config(cfg), {'state_dict': state_dict},
                           strict=True, source=out)
    except RuntimeError as e:
        raise RuntimeError(
            f'the folded config does not build a model that loads the folded weights ({e}): '
            'every folded norm must come from a PRepBN / RepBN norm config or a SLAB '
            'backbone of the config. Not saving ' + out) from e
    atomic_save({'state_dict': state_dict, 'meta': meta}, out)
    atomic_write_text(cfg.pretty_text, outputs['folded config (<out stem>_config.py)'])
    return err
