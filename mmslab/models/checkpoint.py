"""Conversion of the released SLAB checkpoints and loading them into our backbones.

The release files (SLAB.md section 5) hold the weights under ``'model'``; mmengine's
stock ``Pretrained`` initializer only unwraps ``'state_dict'``, so the backbones load
``init_cfg`` checkpoints themselves (as mmdet's PVT / Swin do) through
:func:`load_pretrained`, which converts, adapts and checks the architecture.
"""
import math
import os
import re
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger, print_log
from mmengine.runner import CheckpointLoader

StateDict = Dict[str, torch.Tensor]

# Release-only entries: PRepBN's forward counters, Swin's cached masks / index tables.
_RELEASE_ONLY = re.compile(r'(^|\.)(warm|iter|total_step|attn_mask|relative_position_index)$')
# Classification-only entries: the head, the final norm, PVT's cls token.
_CLASSIFICATION_ONLY = re.compile(r'^(head|norm|cls_token)(\.|$)')


def _rename(state_dict: StateDict, rules: List[Tuple[str, Callable]]) -> StateDict:
    out = {}
    for k, v in state_dict.items():
        if _RELEASE_ONLY.search(k) or _CLASSIFICATION_ONLY.match(k):
            continue
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def convert_slab_swin(state_dict: StateDict) -> StateDict:
    """Release SLAB-Swin / Swin-PRepBN names -> :class:`SLABSwin` names.

    ``layers.i.*`` -> ``stages.i.*``; head, final norm and release-only buffers dropped.
    Keys already in mmslab's layout pass through unchanged.
    """
    return _rename(state_dict, [(r'^layers\.(\d+)\.', r'stages.\1.')])


def convert_slab_pvt(state_dict: StateDict) -> StateDict:
    """Release SLAB-PVT / PVT-PRepBN names -> :class:`SLABPVT` names.

    ``patch_embed{i}`` / ``pos_embed{i}`` / ``block{i}.j`` -> ``stages.{i-1}.patch_embed`` /
    ``.pos_embed`` / ``.blocks.j``; head, final norm, cls token and release-only buffers
    dropped. Keys already in mmslab's layout pass through unchanged.
    """
    stage = lambda m, rest: f'stages.{int(m.group(1)) - 1}.{rest}'  # noqa: E731
    return _rename(state_dict, [
        (r'^patch_embed(\d)\.', lambda m: stage(m, 'patch_embed.')),
        (r'^pos_embed(\d)$', lambda m: stage(m, 'pos_embed')),
        (r'^block(\d)\.', lambda m: stage(m, 'blocks.')),
    ])


def unwrap_state_dict(checkpoint: dict, prefix: Optional[str] = None) -> StateDict:
    """The weights of a checkpoint file: under 'state_dict' (mmengine), 'model' (the SLAB
    release, timm, DeiT) or bare; ``module.`` stripped; with ``prefix`` (e.g. 'backbone.')
    only the keys under it. A full mmdet/mmseg model checkpoint is recognised by its
    ``backbone.`` keys."""
    sd = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError('checkpoint holds no state dict (looked under "state_dict", "model" '
                         'and at the top level)')
    sd = {k[7:] if k.startswith('module.') else k: v for k, v in sd.items()}
    if prefix is None and any(k.startswith('backbone.') for k in sd):
        prefix = 'backbone.'
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f'checkpoint has no keys under prefix {prefix!r}')
    return sd


def describe_state_dict(sd: StateDict) -> str:
    """A short description of the architecture a (converted) state dict belongs to."""
    if any(re.match(r'^layers\.\d+\.blocks\.', k) for k in sd):
        return 'a release SLAB-Swin/Swin checkpoint (layers.N.blocks.*) not converted for PVT'
    if any(re.match(r'^(block|patch_embed)\d', k) for k in sd):
        return 'a release SLAB-PVT/PVT checkpoint (blockN.*) not converted for Swin'
    depths: Dict[int, int] = {}
    for k in sd:
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.', k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths.get(s, 0), b + 1)
    widths = [sd[k].shape[0] for k in sorted(sd) if re.match(r'^stages\.\d+\.patch_embed\.proj\.weight$', k)]
    if 'patch_embed.proj.weight' in sd:
        widths = [sd['patch_embed.proj.weight'].shape[0]]
    kind = 'PVT-like' if any('.pos_embed' in k for k in sd) else 'Swin-like'
    return (f'a {kind} checkpoint with depths {[depths[i] for i in sorted(depths)]} and '
            f'embed dims {widths}')


def _resize_table(name: str, value: torch.Tensor, target: torch.Tensor,
                  module: nn.Module) -> torch.Tensor:
    """Resize a position table / relative-position bias table to the model's size."""
    if name.endswith('relative_position_bias_table'):
        src, dst = math.isqrt(value.shape[0]), math.isqrt(target.shape[0])
        grid = value.t().reshape(1, -1, src, src).float()
        grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
        return grid.reshape(-1, dst * dst).t().to(value.dtype)
    src = math.isqrt(value.shape[1])
    if src * src != value.shape[1]:
        raise ValueError(f'{name}: cannot resize a non-square table of {value.shape[1]} entries')
    from .attention import resize_pos_embed
    return resize_pos_embed(value.float(), (src, src), module.pos_grid).to(value.dtype)


_RESIZABLE = ('positional_encoding', 'pos_embed', 'relative_position_bias_table')


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
    norms the release never had) may be missing; they keep their initialisation and are
    logged by name.
    """
    logger = logger or MMLogger.get_current_instance()
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location='cpu', logger=logger)
    raw = unwrap_state_dict(checkpoint, prefix)
    sd = convert(raw)
    own = model.state_dict()
    name = type(model).__name__
    wrong_shape = []
    for k, v in list(sd.items()):
        if k in own and v.shape != own[k].shape:
            if k.endswith(_RESIZABLE) and v.dim() == own[k].dim():
                sd[k] = _resize_table(k, v, own[k], model.get_submodule(k.rpartition('.')[0]))
                print_log(f'{name}: resized {k} from {tuple(v.shape)} to {tuple(own[k].shape)}',
                          logger=logger)
            else:
                wrong_shape.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}')
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(k for k in set(own) - set(sd)
                     if not any(re.search(p, k) for p in optional))
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
    dropped = sorted({re.sub(r'\.\d+\.', '.N.', k) for k in raw
                      if _RELEASE_ONLY.search(k) or _CLASSIFICATION_ONLY.match(k)})
    model.load_state_dict(sd, strict=False)
    kept_init = sorted(set(own) - set(sd))
    print_log(f'{name}: loaded {len(sd)} tensors from {filename}'
              + (f'; kept initialisation of {kept_init}' if kept_init else '')
              + (f'; ignored release-only/classification entries {dropped}' if dropped else ''),
              logger=logger)


CONVERTERS = {'pvt': convert_slab_pvt, 'swin': convert_slab_swin}


def convert_checkpoint_file(src: str, dst: str, family: str) -> int:
    """Convert a released SLAB checkpoint offline into mmslab names.

    Writes ``{'state_dict': ..., 'meta': {'converted_from': src}}`` (what mmengine and the
    backbones' ``init_cfg`` read). Refuses to write onto ``src``. Returns the tensor count.
    """
    if family not in CONVERTERS:
        raise ValueError(f'family must be one of {sorted(CONVERTERS)}, got {family!r}')
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f'refusing to overwrite the source checkpoint {src}')
    raw = unwrap_state_dict(CheckpointLoader.load_checkpoint(src, map_location='cpu'))
    sd = CONVERTERS[family](raw)
    if not any(k.startswith('stages.') for k in sd):
        raise ValueError(f'{src} does not look like a SLAB-{family.upper()} checkpoint: it '
                         f'looks like {describe_state_dict(sd)}')
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save({'state_dict': sd, 'meta': {'converted_from': src}}, dst)
    return len(sd)
