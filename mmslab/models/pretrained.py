"""Loading pretrained weights (a released ImageNet file, an mmslab or a detector
checkpoint) into a SLAB backbone: what ``init_cfg=dict(type='Pretrained', ...)`` runs.

The release files hold their weights under ``'model'``; mmengine's stock ``Pretrained``
initializer only unwraps ``'state_dict'``, so the backbones load ``init_cfg`` checkpoints
themselves (as mmdet's PVT / Swin do) through :func:`load_pretrained`, which converts the
names, resizes position tables, and checks the architecture and the weight form.
"""
import re
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MMLogger, print_log

from ..checkpoint_io import describe_state_dict, read_checkpoint, unwrap_state_dict
from .key_conversion import dropped_keys
from .pos_embed import RESIZABLE_TABLES, resize_checkpoint_table
from .weight_form import check_state_dict_form

StateDict = Dict[str, torch.Tensor]


def _resize(model: nn.Module, key: str, value: torch.Tensor,
            target: torch.Tensor) -> torch.Tensor:
    """``value`` (the checkpoint's ``key``) resized to the model's table ``target``; a
    position table is resized to the grid (``pos_grid``) of the module that holds it."""
    grid = None
    if not key.endswith('relative_position_bias_table'):
        grid = model.get_submodule(key.rpartition('.')[0]).pos_grid
    return resize_checkpoint_table(key, value, target.shape, grid)


def load_pretrained(model: nn.Module,
                    filename: str,
                    convert: Callable[[StateDict], StateDict],
                    prefix: Optional[str] = None,
                    optional: Tuple[str, ...] = (),
                    logger: Optional[MMLogger] = None) -> None:
    """Load a released (or mmslab) checkpoint into a SLAB backbone.

    Converts names with ``convert``, resizes position / relative-position tables whose
    size differs, and refuses a checkpoint of another architecture with an error that
    says what it holds. Model keys matching a regex in ``optional`` (e.g. the Swin output
    norms the release never had) and PRepBN's ``lam`` (absent from release files: 0) may
    be missing; they keep their initialisation and are logged by name. A trained-form
    checkpoint into a folded (``deploy=True``) backbone, or the reverse, is refused (see
    :func:`~.weight_form.check_state_dict_form`); an unreadable file is diagnosed (see
    :func:`~.checkpoint_io.read_checkpoint`). Every error names ``filename``.
    """
    logger = logger or MMLogger.get_current_instance()
    name = type(model).__name__
    checkpoint = read_checkpoint(filename, map_location='cpu', logger=logger)
    raw = unwrap_state_dict(checkpoint, prefix, source=str(filename))
    sd = convert(raw)
    check_state_dict_form(name, bool(getattr(model, 'deploy', False)), sd, source=str(filename))
    own = model.state_dict()
    wrong_shape = []
    for k, v in list(sd.items()):
        if k in own and v.shape != own[k].shape:
            if k.endswith(RESIZABLE_TABLES) and v.dim() == own[k].dim():
                sd[k] = _resize(model, k, v, own[k])
                print_log(f'{name}: resized {k} from {tuple(v.shape)} to {tuple(own[k].shape)}',
                          logger=logger)
            else:
                wrong_shape.append(f'{k}: checkpoint {tuple(v.shape)} vs model '
                                   f'{tuple(own[k].shape)}')
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(k for k in set(own) - set(sd)
                     if not k.endswith('.lam') and not any(re.search(p, k) for p in optional))
    if wrong_shape or unexpected or missing:
        lines = [f'{filename} does not fit {name}{getattr(model, "arch_settings", "")}: '
                 f'it looks like {describe_state_dict(sd)}.']
        for title, keys in (('shape mismatches', wrong_shape), ('unexpected keys', unexpected),
                            ('missing keys', missing)):
            if keys:
                more = f' ... (+{len(keys) - 8} more)' if len(keys) > 8 else ''
                lines.append(f'{len(keys)} {title}: {", ".join(keys[:8])}{more}')
        if getattr(model, 'deploy', False):
            lines.append('This backbone has deploy=True and loads only re-parameterized '
                         '(folded) checkpoints: build it with deploy=False, load, then call '
                         'switch_to_deploy() (tools/deploy.py does this for a whole model).')
        raise ValueError('\n'.join(lines))
    dropped = dropped_keys(raw)
    model.load_state_dict(sd, strict=False)
    kept_init = sorted(k for k in set(own) - set(sd) if not k.endswith('.lam'))  # lam: 0
    print_log(f'{name}: loaded {len(sd)} tensors from {filename}'
              + (f'; kept initialisation of {kept_init}' if kept_init else '')
              + (f'; ignored release-only/classification entries {dropped}' if dropped else ''),
              logger=logger)
