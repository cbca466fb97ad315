"""Released SLAB classification files -> mmpretrain ``ImageClassifier`` state dicts
(docs/classification.md).

A release classification file holds ``{'model': state_dict}``: the backbone in the
release's names, the head ``head.weight`` / ``head.bias`` and, for SLAB-Swin, the final
norm ``norm.*``. An ``ImageClassifier`` with a SLAB backbone and a ``LinearClsHead``
names them ``backbone.*`` (the backbone's own converter, ``convert_checkpoint``:
:data:`~.key_conversion.CONVERTERS` ``'pvt'`` / ``'swin'`` / ``'deit'``), ``head.fc.*``
and ``backbone.norm.*`` (``SLABSwin(final_norm=True)``; the DeiT family's final norm, class
token and position table are ``SLABDeiT`` entries already).

* :func:`convert_slab_swin_with_final_norm`: the converter of a final-norm ``SLABSwin``.
* :func:`convert_release_classifier`: a release state dict -> a classifier state dict.
* :func:`release_family`: the backbone family of a release file (PVT, Swin, DeiT).
* :func:`classifier_state_dict`: the state dict a classifier loads from any checkpoint
  (release or mmengine layout), checked against the model first: a file of another
  model (a detector, a file of another backbone family, a DeiT file of another variant,
  a head of another class count) raises a ``ValueError`` that says what the file is, and
  nothing is loaded.
* :func:`convert_classifier_checkpoint`: the same offline, file to file
  (``tools/convert_checkpoint.py --classifier``).
"""
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint_io import describe_state_dict, read_checkpoint, unwrap_state_dict
from ..fileio import atomic_save, check_outputs
from .key_conversion import convert_slab_swin, is_dropped, is_vit_layout
from .weight_form import check_state_dict_form

StateDict = Dict[str, torch.Tensor]

# the keys of dense-prediction parts: a detector's / segmentor's checkpoint
_DENSE_PARTS = ('neck', 'rpn_head', 'roi_head', 'bbox_head', 'mask_head', 'decode_head',
                'auxiliary_head', 'query_head', 'encoder', 'decoder')
# the release's classification files by backbone family: the backbone that loads them, the
# keys that mark them, their configs (configs/cls/)
_FAMILIES = {
    'pvt': dict(backbone='SLABPVT', title='PVT family', models='SLAB-PVT, PVT-PRepBN',
                keys='blockN.*, patch_embedN.*', configs='slab_pvt_tiny.py, '
                'pvt_tiny_prepbn.py, pvt_small_prepbn.py, pvt_medium_prepbn.py'),
    'swin': dict(backbone='SLABSwin', title='Swin family', models='SLAB-Swin, Swin-PRepBN',
                 keys='layers.N.blocks.*', configs='slab_swin_tiny.py, slab_swin_small.py, '
                 'slab_swin_base.py, swin_tiny_prepbn.py'),
    'deit': dict(backbone='SLABDeiT', title='DeiT family',
                 models='DeiT-PRepBN, DeiT-RepBN, SLAB-DeiT',
                 keys='blocks.N.*, pos_embed, cls_token', configs='deit_tiny_prepbn.py, '
                 'deit_small_prepbn.py, slab_deit_tiny.py, slab_deit_small.py'),
}
# the DeiT family's models: (attention, norm) of SLABDeiT -> (name, configs)
_DEIT_MODELS = {
    ('sla', 'PRepBN'): ('SLAB-DeiT', 'slab_deit_tiny.py, slab_deit_small.py'),
    ('softmax', 'PRepBN'): ('DeiT-PRepBN', 'deit_small_prepbn.py'),
    ('softmax', 'RepBN'): ('DeiT-RepBN', 'deit_tiny_prepbn.py'),
}
_HOW_TO_DROP_HEAD = ("ReleaseCheckpointHook(drop_head=True) in the config's custom_hooks "
                     '(on the command line: --cfg-options custom_hooks.0.drop_head=True), or '
                     'tools/convert_checkpoint.py --drop-head')


def convert_slab_swin_with_final_norm(state_dict: StateDict) -> StateDict:
    """:func:`~.key_conversion.convert_slab_swin`, keeping the file's final norm
    ``norm.*`` (the release's classification ``norm``, a PRepBN: ``norm.norm1.*`` /
    ``norm.norm2.*``; its forward counters dropped): what ``SLABSwin(final_norm=True)``
    loads through ``init_cfg``."""
    out = convert_slab_swin(state_dict)
    out.update((k, v) for k, v in state_dict.items()
               if k.startswith('norm.') and not is_dropped(k[len('norm.'):]))
    return out


def convert_release_classifier(state_dict: StateDict,
                               convert: Callable[[StateDict], StateDict],
                               drop_head: bool = False) -> StateDict:
    """A release classification state dict -> an ``ImageClassifier`` state dict.

    ``convert`` is the backbone's converter (``SLABPVT.convert_checkpoint``, a final-norm
    ``SLABSwin``'s :func:`convert_slab_swin_with_final_norm`, ``SLABDeiT.convert_checkpoint``,
    which leaves the file's ``head.*`` out): its keys get ``backbone.``;
    ``head.<name>`` becomes ``head.fc.<name>`` (``LinearClsHead``), or is left out with
    ``drop_head``. Nothing is checked here (:func:`classifier_state_dict` does)."""
    out: StateDict = OrderedDict(('backbone.' + k, v) for k, v in convert(state_dict).items())
    if not drop_head:
        out.update(('head.fc.' + k[len('head.'):], v) for k, v in state_dict.items()
                   if k.startswith('head.'))
    return out


def is_release_layout(state_dict: StateDict) -> bool:
    """Whether an unwrapped state dict is in a release's layout (no ``backbone.`` key), not
    in an mmengine model's."""
    return not any(k.startswith('backbone.') for k in state_dict)


def release_family(state_dict: StateDict) -> Optional[str]:
    """The backbone family of a release-layout state dict: ``'deit'`` (a plain vision
    transformer: top-level ``blocks.N`` and ``pos_embed``), ``'swin'`` (``layers.N.blocks``),
    ``'pvt'`` (``blockN`` / ``patch_embedN``), or None (another layout, e.g. a backbone
    already converted to mmslab's ``stages.N`` names)."""
    if is_vit_layout(state_dict):
        return 'deit'
    if any(re.match(r'^layers\.\d+\.blocks\.', k) for k in state_dict):
        return 'swin'
    if any(re.match(r'^(block|patch_embed|pos_embed)\d', k) for k in state_dict):
        return 'pvt'
    return None


def deit_options(state_dict: StateDict) -> Tuple[Optional[str], Optional[str]]:
    """``(attention, norm)`` of the ``SLABDeiT`` a DeiT-family state dict (release or
    backbone names, ``backbone.`` stripped) was made by: ``'sla'`` with SLA's positional
    encoding, else ``'softmax'``; ``'PRepBN'`` (the release's LinearNorm: ``norm1.norm1.*``)
    or ``'RepBN'`` (``norm1.bn.*``), None for folded norms."""
    attention = ('sla' if any(re.match(r'^blocks\.\d+\.attn\.positional_encoding$', k)
                              for k in state_dict) else 'softmax')
    norm = None
    for k in state_dict:
        if re.match(r'^blocks\.\d+\.norm1\.norm1\.', k):
            norm = 'PRepBN'
            break
        if re.match(r'^blocks\.\d+\.norm1\.bn\.', k):
            norm = 'RepBN'
            break
    return attention, norm


def _deit_name(attention: Optional[str], norm: Optional[str]) -> str:
    name = _DEIT_MODELS.get((attention, norm), ('DeiT-family model', ''))[0]
    return (f'{name} (attention={attention!r}, '
            + (f'norm={norm!r})' if norm else 'folded norms)'))


def _strip_backbone(state_dict: StateDict) -> StateDict:
    return {k[len('backbone.'):] if k.startswith('backbone.') else k: v
            for k, v in state_dict.items()}


def _deit_hint(model: nn.Module, original: StateDict) -> Optional[str]:
    """For a DeiT-family file and a ``SLABDeiT`` classifier of another model (attention or
    norm): which options / config the file's model has."""
    settings = getattr(getattr(model, 'backbone', None), 'arch_settings', None)
    plain = _strip_backbone(original)
    if not isinstance(settings, dict) or 'attention' not in settings or \
            not is_vit_layout(plain):
        return None
    attention, norm = deit_options(plain)
    own = (settings['attention'], settings['norm'])
    if attention == own[0] and norm in (None, own[1]):
        return None
    configs = _DEIT_MODELS.get((attention, norm), (None, ''))[1]
    return (f'The file is a {_deit_name(attention, norm)}, this classifier a '
            f'{_deit_name(*own)}: use the config of the file\'s model'
            + (f' (configs/cls/: {configs})' if configs else '')
            + ' or set these backbone options.')


def describe_checkpoint(state_dict: StateDict) -> str:
    """What model an (unwrapped) state dict belongs to, in a few words."""
    parts = sorted({k.split('.')[0] for k in state_dict if k.split('.')[0] in _DENSE_PARTS})
    if parts:
        return ('a detector / segmentor checkpoint (it has '
                + ', '.join(f'{p}.*' for p in parts) + ')')
    plain = _strip_backbone(state_dict)
    if any(re.match(r'^blocks\.\d+\.', k) for k in plain):
        return ('a DeiT / ViT checkpoint (blocks.N.*, cls_token, pos_embed) of a '
                + _deit_name(*deit_options(plain)))
    heads = sorted({'.'.join(k.split('.')[:2]) for k in state_dict if k.startswith('head.')})
    layout = ('an mmengine classifier checkpoint' if not is_release_layout(state_dict)
              else 'a backbone-only checkpoint' if not heads
              else 'a release classification checkpoint')
    backbone = {k: v for k, v in plain.items() if not k.startswith(('head.', 'norm.'))}
    return (f'{layout} ({describe_state_dict(backbone)}'
            + (f'; head entries {heads}' if heads else '; no head') + ')')


def _classes(state_dict: StateDict, key: str) -> Optional[int]:
    value = state_dict.get(key)
    return int(value.shape[0]) if value is not None and value.dim() >= 1 else None


def _listing(title: str, keys: List[str]) -> str:
    more = f' ... (+{len(keys) - 8} more)' if len(keys) > 8 else ''
    return f'{len(keys)} {title}: {", ".join(keys[:8])}{more}'


def check_classifier_state_dict(model: nn.Module, state_dict: StateDict, source: str,
                                original: Optional[StateDict] = None,
                                drop_head: bool = False) -> None:
    """Raise a ``ValueError`` unless ``state_dict`` fits ``model`` exactly: the same keys
    (PRepBN's ``lam`` may be missing: 0, a converged norm; with ``drop_head`` the head's
    keys must be missing) and shapes. The message says what the file (``original``, as
    read) looks like and, for a head of another class count, how to leave it out."""
    own = model.state_dict()
    head = [k for k in own if k.startswith('head.')] if drop_head else []
    missing = sorted(k for k in set(own) - set(state_dict)
                     if not k.endswith('.lam') and k not in head)
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict)
                   if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if not (missing or unexpected or wrong):
        return
    original = original if original is not None else state_dict
    lines = [f'{source} does not fit {_what_model(model)}: it is '
             f'{describe_checkpoint(original)}. Nothing was loaded.']
    lines += [_listing(t, keys) for t, keys in (
        ('shape mismatches', [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
                              f'{tuple(own[k].shape)}' for k in wrong]),
        ('unexpected keys', unexpected), ('missing keys', missing)) if keys]
    if wrong and all(k.startswith('head.') for k in wrong) and not (missing or unexpected):
        lines.append(f"The file's head has {_classes(state_dict, 'head.fc.weight')} classes, "
                     f"the model's {_classes(own, 'head.fc.weight')}: set the head's "
                     f"num_classes to the file's, or leave the file's head out and keep the "
                     f"model's freshly initialised one: {_HOW_TO_DROP_HEAD}.")
    elif missing and all(k.startswith('head.') for k in missing) and not (wrong or unexpected):
        lines.append(f'The file has no head: to load the rest, {_HOW_TO_DROP_HEAD}.')
    hint = _deit_hint(model, original)
    if hint:
        lines.append(hint)
    raise ValueError('\n'.join(lines))


def _what_model(model: nn.Module) -> str:
    """``this ImageClassifier (SLABDeiT backbone, SLAB-DeiT (...), a head of N classes)``."""
    backbone = getattr(model, 'backbone', None)
    settings = getattr(backbone, 'arch_settings', None)
    own = model.state_dict()
    deit = (f', {_deit_name(settings["attention"], settings["norm"])}'
            if isinstance(settings, dict) and 'attention' in settings else '')
    return (f'this {type(model).__name__} ({type(backbone).__name__} backbone{deit}'
            + (f', a head of {_classes(own, "head.fc.weight")} classes'
               if 'head.fc.weight' in own else '') + ')')


def check_release_family(model: nn.Module, state_dict: StateDict, source: str) -> None:
    """Raise a ``ValueError`` when a release-layout ``state_dict`` is a file of another
    backbone family than ``model``'s (a Swin or PVT file for a DeiT-family classifier, a
    DeiT file for a Swin one ...): which family the file is, which configs take it."""
    family = release_family(state_dict)
    backbone = type(getattr(model, 'backbone', None)).__name__
    own = next((f for f, spec in _FAMILIES.items() if spec['backbone'] == backbone), None)
    if family is None or own is None or family == own:
        return
    spec = _FAMILIES[family]
    variant = (f'; this one a {_deit_name(*deit_options(state_dict))}'
               if family == 'deit' else '')
    raise ValueError(
        f'{source} is a release classification file of the {spec["title"]} '
        f'({spec["models"]}; keys {spec["keys"]}{variant}), which a {spec["backbone"]} '
        'backbone loads; '
        f'{_what_model(model)} is of the {_FAMILIES[own]["title"]}. Use the config of '
        f'the file\'s model (configs/cls/: {spec["configs"]}). Nothing was loaded.')


def classifier_state_dict(model: nn.Module, checkpoint: Any, source: str = 'checkpoint',
                          drop_head: bool = False) -> StateDict:
    """The state dict ``model`` (an mmpretrain ``ImageClassifier`` with a SLAB backbone)
    loads from ``checkpoint`` (what :func:`~mmslab.checkpoint_io.read_checkpoint`
    returned): a release classification file is converted
    (:func:`convert_release_classifier` with the backbone's converter), an mmengine one
    is taken as it is; ``drop_head`` leaves the file's head out. The result is checked
    (:func:`check_classifier_state_dict`, and the backbone's trained / folded form):
    ``ValueError`` naming ``source`` and what it holds, ``checkpoint`` untouched."""
    raw = unwrap_state_dict(checkpoint, prefix='', source=source)
    if is_release_layout(raw):
        convert = getattr(getattr(model, 'backbone', None), 'convert_checkpoint', None)
        if convert is None:
            raise ValueError(f'{source} is in a release layout (no backbone.* keys), which '
                             'only a classifier with a SLAB backbone (SLABPVT, SLABSwin, '
                             f'SLABDeiT) converts; this {type(model).__name__} has '
                             f'{type(getattr(model, "backbone", None)).__name__}')
        check_release_family(model, raw, source)
        try:
            state_dict = convert_release_classifier(raw, convert, drop_head)
        except ValueError as e:  # the backbone's converter refused the file
            hint = _deit_hint(model, raw)
            raise ValueError(f'{source} does not fit {_what_model(model)}: it is '
                             f'{describe_checkpoint(raw)}. Nothing was loaded.\n{e}'
                             + (f'\n{hint}' if hint else '')) from e
    else:
        state_dict = OrderedDict((k, v) for k, v in raw.items()
                                 if not (drop_head and k.startswith('head.')))
        if hasattr(raw, '_metadata'):  # per-module versions (BatchNorm reads them)
            state_dict._metadata = raw._metadata  # type: ignore[attr-defined]
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'deploy'):
        check_state_dict_form(type(backbone).__name__, bool(backbone.deploy),
                              [k[len('backbone.'):] for k in state_dict
                               if k.startswith('backbone.')],
                              source=source, prefix='backbone.')
    check_classifier_state_dict(model, state_dict, source, raw, drop_head)
    return state_dict


def convert_classifier_checkpoint(src: str, dst: str, model: nn.Module,
                                  drop_head: bool = False, trust: bool = False) -> int:
    """Convert a released SLAB classification file (or check an mmengine one) offline
    into the ``ImageClassifier`` state dict of ``model`` (built from the config it is
    for): :func:`classifier_state_dict`, written as ``{'state_dict', 'meta'}``
    atomically, never onto ``src``. ``trust``: see
    :func:`~mmslab.checkpoint_io.read_checkpoint`. Returns the tensor count."""
    check_outputs({'output checkpoint': dst}, {'source checkpoint': src},
                  'convert_classifier_checkpoint')
    checkpoint = read_checkpoint(src, map_location='cpu', trust=trust)
    state_dict = classifier_state_dict(model, checkpoint, source=str(src), drop_head=drop_head)
    atomic_save({'state_dict': state_dict,
                 'meta': {'converted_from': src, 'head_dropped': drop_head}}, dst)
    return len(state_dict)
