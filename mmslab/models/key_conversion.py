"""Release checkpoint names -> mmslab names (docs/method.md, "Checkpoints").

* :func:`convert_slab_pvt` / :func:`convert_slab_swin`: rename the released ImageNet
  checkpoints' keys to :class:`~mmslab.models.SLABPVT` / :class:`~mmslab.models.SLABSwin`
  names, dropping what a detection backbone does not have (release-only buffers,
  classification entries: :func:`dropped_keys`).
* :func:`convert_deit`: the release's DeiT family (DeiT-PRepBN / -RepBN, SLAB-DeiT) to
  :class:`~mmslab.models.SLABDeiT` names; its class token and final norm are backbone
  entries there, and the head is passed through under its own names (``head.*``) for a
  whole-classifier conversion to map (the backbone's loader leaves it out).
* :func:`convert_checkpoint_file`: the same offline, file to file (tools/convert_checkpoint.py).
"""
import re
from typing import Callable, Dict, List, Tuple

import torch

from ..fileio import atomic_save, check_outputs
from ..validation import check_choice
from ..checkpoint_io import describe_state_dict, read_checkpoint, unwrap_state_dict

StateDict = Dict[str, torch.Tensor]

# Release-only entries: PRepBN's forward counters, Swin's cached masks / index tables.
_RELEASE_ONLY = re.compile(r'(^|\.)(warm|iter|total_step|attn_mask|relative_position_index)$')
# Classification-only entries: the head, the final norm, PVT's cls token.
_CLASSIFICATION_ONLY = re.compile(r'^(head|norm|cls_token)(\.|$)')
# The classifier head of a DeiT-family file (its cls token and final norm are backbone
# entries of SLABDeiT).
_DEIT_HEAD = re.compile(r'^head\.')


def is_dropped(key: str) -> bool:
    """Whether the converters drop the release key ``key`` (release-only buffers,
    classification-only entries)."""
    return bool(_RELEASE_ONLY.search(key) or _CLASSIFICATION_ONLY.match(key))


def is_vit_layout(state_dict: StateDict) -> bool:
    """Whether ``state_dict`` is laid out as a plain vision transformer (the DeiT family:
    one ``pos_embed`` and top-level ``blocks.N``), whose class token and final norm are
    backbone entries."""
    return 'pos_embed' in state_dict and any(k.startswith('blocks.') for k in state_dict)


def dropped_keys(state_dict: StateDict) -> List[str]:
    """The kinds of keys of a release state dict the backbones' loaders leave out, block
    indices generalised (``layers.N.blocks.N.attn.attn_mask``), sorted. For the DeiT
    layout (:func:`is_vit_layout`) these are the release-only buffers and the head."""
    if is_vit_layout(state_dict):
        dropped = [k for k in state_dict if _RELEASE_ONLY.search(k) or _DEIT_HEAD.match(k)]
    else:
        dropped = [k for k in state_dict if is_dropped(k)]
    return sorted({re.sub(r'\.\d+\.', '.N.', k) for k in dropped})


def _rename(state_dict: StateDict, rules: List[Tuple[str, Callable]]) -> StateDict:
    out = {}
    for k, v in state_dict.items():
        if is_dropped(k):
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


def convert_deit(state_dict: StateDict) -> StateDict:
    """Release DeiT-PRepBN / DeiT-RepBN / SLAB-DeiT names -> :class:`SLABDeiT` names.

    The release's names already are SLABDeiT's (``patch_embed.proj``, ``cls_token``,
    ``pos_embed``, ``blocks.N.{norm1,attn,norm2,mlp}``, ``norm``; LinearNorm's
    ``norm1.*`` / ``norm2.{alpha,bn.*}`` are PRepBN's entries, RepBN's ``alpha`` / ``bn.*``
    RepBN's), so only PRepBN's forward counters (``iter``, ``total_step``, ``warm``) are
    dropped. Everything else keeps its name: ``cls_token`` (unused by SLAB-DeiT, whose
    backbone leaves it out), ``pos_embed`` (``(1, 1 + N, C)`` with a class token,
    ``(1, N, C)`` in SLAB-DeiT), the final ``norm``, and the classifier ``head.*``, which
    is not a backbone entry and is left for a whole-classifier conversion to map.
    """
    return {k: v for k, v in state_dict.items() if not _RELEASE_ONLY.search(k)}


CONVERTERS = {'pvt': convert_slab_pvt, 'swin': convert_slab_swin, 'deit': convert_deit}
# a key prefix every converted state dict of the family has
_FAMILY_MARKER = {'pvt': 'stages.', 'swin': 'stages.', 'deit': 'blocks.'}


def convert_checkpoint_file(src: str, dst: str, family: str, trust: bool = False) -> int:
    """Convert a released SLAB checkpoint offline into mmslab names.

    Writes ``{'state_dict': ..., 'meta': {'converted_from': src}}`` (what mmengine and the
    backbones' ``init_cfg`` read, with torch's ``weights_only=True`` loader too),
    atomically (an interrupted run leaves ``dst`` as it was). Refuses to write onto ``src``
    (real paths compared: symlinks and hard links too). ``trust=True`` reads ``src`` with
    ``weights_only=False`` (see :func:`~.checkpoint_io.read_checkpoint`): for a file the
    user vouches for whose extra entries need other globals. Returns the tensor count.
    """
    check_choice('convert_checkpoint', 'family', family, sorted(CONVERTERS))
    check_outputs({'output checkpoint': dst}, {'source checkpoint': src}, 'convert_checkpoint')
    raw = unwrap_state_dict(read_checkpoint(src, map_location='cpu', trust=trust),
                            source=str(src))
    sd = CONVERTERS[family](raw)
    if not any(k.startswith(_FAMILY_MARKER[family]) for k in sd):
        raise ValueError(f'{src} does not look like a SLAB-{family.upper()} checkpoint: it '
                         f'looks like {describe_state_dict(sd)}')
    atomic_save({'state_dict': sd, 'meta': {'converted_from': src}}, dst)
    return len(sd)
