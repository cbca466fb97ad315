"""Conversion of the released SLAB checkpoints and loading them into our backbones.

The release files (SLAB.md section 5) hold the weights under ``'model'``; mmengine's
stock ``Pretrained`` initializer only unwraps ``'state_dict'``, so the backbones load
``init_cfg`` checkpoints themselves (as mmdet's PVT / Swin do) through
:func:`load_pretrained`, which converts, adapts and checks the architecture.
"""
import math
import os
import re
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger, print_log
from mmengine.runner import CheckpointLoader

from ..fileio import atomic_save, check_outputs
from ..validation import check_choice

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


def _describe_object(obj: Any) -> str:
    """What a loaded checkpoint object is, in a few words."""
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ', '.join(repr(k) for k in keys[:8]) + (f', ... (+{len(keys) - 8})'
                                                         if len(keys) > 8 else '')
        tensors = sum(torch.is_tensor(v) for v in obj.values())
        return (f'a dict of {len(keys)} entries ({shown}) with {tensors} tensors'
                if keys else 'an empty dict')
    if isinstance(obj, (list, tuple)):
        return f'a {type(obj).__name__} of {len(obj)} items'
    if torch.is_tensor(obj):
        return f'a single tensor of shape {tuple(obj.shape)}'
    return f'a {type(obj).__name__} object'


def unwrap_state_dict(checkpoint: Any, prefix: Optional[str] = None,
                      source: str = 'checkpoint') -> StateDict:
    """The weights of a checkpoint file: under 'state_dict' (mmengine), 'model' (the SLAB
    release, timm, DeiT) or bare; ``module.`` stripped; with ``prefix`` (e.g. 'backbone.')
    only the keys under it. A full mmdet/mmseg model checkpoint is recognised by its
    ``backbone.`` keys. ``source`` (the file name) is named in the errors."""
    sd = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f'{source} holds no state dict: it is {_describe_object(checkpoint)}'
                         + ('' if sd is checkpoint else f', whose weights entry is '
                            f'{_describe_object(sd)}')
                         + '. Looked for a dict of tensors under "state_dict", "model" and at '
                         'the top level.')
    sd = {k[7:] if k.startswith('module.') else k: v for k, v in sd.items()}
    if prefix is None and any(k.startswith('backbone.') for k in sd):
        prefix = 'backbone.'
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f'{source} has no keys under prefix {prefix!r}')
    return sd


_URL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')


def _diagnose_file(filename: str, error: Exception) -> str:
    """Why a local file did not load as a torch checkpoint, in a sentence."""
    size = os.path.getsize(filename)
    with open(filename, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04'):
        try:
            with zipfile.ZipFile(filename) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return (f'it is a truncated or corrupted PyTorch (zip) checkpoint of {size} bytes: '
                    f'its zip directory cannot be read ({e}); torch said: {error}')
        if bad is not None:
            return (f'it is a corrupted PyTorch (zip) checkpoint of {size} bytes: the record '
                    f'{bad!r} fails its CRC check')
        return f'it is a PyTorch (zip) checkpoint of {size} bytes that torch cannot read: {error}'
    if head[:1] == b'\x80':
        return (f'it is a truncated or corrupted pickle / legacy PyTorch checkpoint of {size} '
                f'bytes: {type(error).__name__}: {error}')
    printable = all(32 <= c < 127 or c in b'\t\r\n' for c in head)
    return (f'it is not a PyTorch checkpoint ({size} bytes, it starts with '
            f'{"the text " if printable else ""}{head[:32]!r}): {type(error).__name__}: {error}')


def read_checkpoint(filename: str, map_location: str = 'cpu',
                    logger: Optional[MMLogger] = None) -> Any:
    """Load a checkpoint file or URL with mmengine's ``CheckpointLoader``, with errors that
    name the file and say what it holds.

    A local file is checked first: it must exist, be a file and not be empty, and a
    PyTorch zip checkpoint must pass its CRC check (a corrupted file otherwise loads
    silently with wrong weights). A file that fails to load is diagnosed (truncated,
    corrupted, not a PyTorch checkpoint). Returns what ``torch.load`` returns.

    Raises:
        TypeError: ``filename`` is not a path.
        FileNotFoundError / IsADirectoryError: no such file.
        ValueError: the file is empty, truncated, corrupted or not a checkpoint.
    """
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f'a checkpoint must be a path or URL (str), got {filename!r} '
                        f'({type(filename).__name__})')
    filename = os.fspath(filename)
    local = not _URL.match(filename)
    if local:
        path = os.path.expanduser(filename)
        if os.path.isdir(path):
            raise IsADirectoryError(f'checkpoint {filename} is a directory, not a file')
        if not os.path.exists(path):
            raise FileNotFoundError(f'checkpoint file {filename} does not exist'
                                    + (f' (resolved: {os.path.realpath(path)})'
                                       if os.path.islink(path) else ''))
        if os.path.getsize(path) == 0:
            raise ValueError(f'cannot load checkpoint {filename}: the file is empty (0 bytes)')
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f'cannot load checkpoint {filename}: it is a corrupted '
                                 f'PyTorch (zip) checkpoint: {e}') from e
            if bad is not None:
                raise ValueError(f'cannot load checkpoint {filename}: it is a corrupted PyTorch '
                                 f'(zip) checkpoint: the record {bad!r} fails its CRC check')
    try:
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location,
                                                logger=logger)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 -- torch / pickle raise many types
        if not local:
            raise ValueError(f'cannot load checkpoint {filename}: {type(e).__name__}: {e}') from e
        raise ValueError(f'cannot load checkpoint {filename}: '
                         f'{_diagnose_file(os.path.expanduser(filename), e)}') from e


# A trained-form (unfolded) SLAB state dict has PRepBN entries: <norm>.norm1.{weight,bias}
# (LayerNorm), <norm>.norm2.{alpha,bn.*} (RepBN), <norm>.lam. A folded (deploy) one has
# none of them, and Swin blocks carry a `qkv_pad` buffer.
_TRAINED_KEY = re.compile(r'(^|\.)norm\d?\.(norm1\.(weight|bias)|norm2\.(alpha|bn\.\w+)|lam)$')
_FOLDED_KEY = re.compile(r'(^|\.)qkv_pad$')
_BLOCK_FC1 = re.compile(r'^(.*blocks\.\d+\.)mlp\.fc1\.weight$')


def state_dict_form(keys: Any) -> Tuple[Optional[str], List[str]]:
    """Whether state-dict ``keys`` (relative to the backbone) are of a trained-form
    (``'trained'``: PRepBN norms present) or a folded (``'folded'``: norms folded away by
    ``switch_to_deploy`` / tools/deploy.py) SLAB backbone, with a few keys that show it;
    ``(None, [])`` when the keys say neither (e.g. no block at all)."""
    keys = list(keys)
    trained = [k for k in keys if _TRAINED_KEY.search(k)]
    if trained:  # the LayerNorm / BatchNorm entries show it best, lam last
        return 'trained', sorted(trained, key=lambda k: k.endswith('.lam'))[:3]
    folded = [k for k in keys if _FOLDED_KEY.search(k)]
    if folded:
        return 'folded', folded[:3]
    # PVT has no folded-only buffer: a block whose MLP is there without any norm
    fc1 = [k for k in keys if _BLOCK_FC1.match(k)]
    if fc1:
        return 'folded', fc1[:3]
    return None, []


def check_state_dict_form(owner: str, deploy: bool, keys: Any, source: str = 'the state dict',
                          prefix: str = '') -> None:
    """Refuse a trained-form state dict for a folded (``deploy=True``) backbone and a
    folded one for a trained-form backbone, saying which is which and how to convert.

    Args:
        owner: the backbone's class name.
        deploy: whether the backbone is folded.
        keys: the state-dict keys relative to the backbone.
        source: what is being loaded (a file name), for the message.
        prefix: the backbone's prefix in the loaded dict (``'backbone.'`` in a detector).

    Raises:
        ValueError: the forms differ.
    """
    form, examples = state_dict_form(keys)
    if form is None or form == ('folded' if deploy else 'trained'):
        return
    shown = ', '.join(repr(prefix + k) for k in examples)
    if deploy:
        raise ValueError(
            f'{source} is a trained-form (unfolded) {owner} state dict (it has PRepBN norm '
            f'entries, e.g. {shown}), but this {owner} has deploy=True and loads only '
            f're-parameterized (folded) weights. Fold the trained checkpoint first: '
            f'`python tools/deploy.py CONFIG CHECKPOINT OUT.pth` writes the folded OUT.pth '
            f'and OUT_config.py (with backbone.deploy=True); or build the model with '
            f'deploy=False, load, then call switch_to_deploy() (mmslab.models.reparameterize '
            f'for a whole detector / segmentor).')
    raise ValueError(
        f'{source} is a folded (deploy / re-parameterized) {owner} state dict (its norms are '
        f'folded away: e.g. {shown} without PRepBN entries), but this {owner} is in trained '
        f'form (deploy=False). Build it with deploy=True to load folded weights (the '
        f'<out stem>_config.py that tools/deploy.py wrote next to the folded checkpoint does); '
        f'a folded checkpoint cannot be turned back into the trained form, so to train or '
        f'fine-tune load the trained checkpoint it was folded from.')


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
    norms the release never had) and PRepBN's ``lam`` (absent from release files: 0) may
    be missing; they keep their initialisation and are logged by name. A trained-form
    checkpoint into a folded (``deploy=True``) backbone, or the reverse, is refused (see
    :func:`check_state_dict_form`); an unreadable file is diagnosed (see
    :func:`read_checkpoint`). Every error names ``filename``.
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
            if k.endswith(_RESIZABLE) and v.dim() == own[k].dim():
                sd[k] = _resize_table(k, v, own[k], model.get_submodule(k.rpartition('.')[0]))
                print_log(f'{name}: resized {k} from {tuple(v.shape)} to {tuple(own[k].shape)}',
                          logger=logger)
            else:
                wrong_shape.append(f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}')
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
    dropped = sorted({re.sub(r'\.\d+\.', '.N.', k) for k in raw
                      if _RELEASE_ONLY.search(k) or _CLASSIFICATION_ONLY.match(k)})
    model.load_state_dict(sd, strict=False)
    kept_init = sorted(k for k in set(own) - set(sd) if not k.endswith('.lam'))  # lam: 0
    print_log(f'{name}: loaded {len(sd)} tensors from {filename}'
              + (f'; kept initialisation of {kept_init}' if kept_init else '')
              + (f'; ignored release-only/classification entries {dropped}' if dropped else ''),
              logger=logger)


CONVERTERS = {'pvt': convert_slab_pvt, 'swin': convert_slab_swin}


def convert_checkpoint_file(src: str, dst: str, family: str) -> int:
    """Convert a released SLAB checkpoint offline into mmslab names.

    Writes ``{'state_dict': ..., 'meta': {'converted_from': src}}`` (what mmengine and the
    backbones' ``init_cfg`` read), atomically (an interrupted run leaves ``dst`` as it
    was). Refuses to write onto ``src`` (real paths compared: symlinks and hard links
    too). Returns the tensor count.
    """
    check_choice('convert_checkpoint', 'family', family, sorted(CONVERTERS))
    check_outputs({'output checkpoint': dst}, {'source checkpoint': src}, 'convert_checkpoint')
    raw = unwrap_state_dict(read_checkpoint(src, map_location='cpu'), source=str(src))
    sd = CONVERTERS[family](raw)
    if not any(k.startswith('stages.') for k in sd):
        raise ValueError(f'{src} does not look like a SLAB-{family.upper()} checkpoint: it '
                         f'looks like {describe_state_dict(sd)}')
    atomic_save({'state_dict': sd, 'meta': {'converted_from': src}}, dst)
    return len(sd)
