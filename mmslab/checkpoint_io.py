"""Reading checkpoint files, with errors that say what a wrong file holds.

* :func:`read_checkpoint`: a file or URL through mmengine's ``CheckpointLoader``; a local
  file is checked first (exists, not empty, zip CRCs) and a file that fails to load is
  diagnosed (truncated, corrupted, not a PyTorch checkpoint).
* :func:`unwrap_state_dict`: the weights of a loaded checkpoint (under ``'state_dict'``,
  ``'model'`` or bare; optionally only a prefix such as ``'backbone.'``).
* :func:`describe_state_dict`: what architecture a state dict looks like, for errors.
* :func:`load_model_weights`: a whole model's weights from a loaded checkpoint, through
  mmengine's public ``load_state_dict``.
"""
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader, load_state_dict

from .serialization import load_trusted

StateDict = Dict[str, torch.Tensor]


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
    metadata = getattr(sd, '_metadata', None)  # per-module versions (BatchNorm reads them)
    sd = _strip(sd, metadata, 'module.', keep_others=True)
    if prefix is None and any(k.startswith('backbone.') for k in sd):
        prefix = 'backbone.'
    if prefix:
        sd = _strip(sd, getattr(sd, '_metadata', None), prefix, keep_others=False)
        if not sd:
            raise ValueError(f'{source} has no keys under prefix {prefix!r}')
    return sd


def _strip(sd: StateDict, metadata: Optional[Dict[str, Any]], prefix: str,
           keep_others: bool) -> StateDict:
    """``sd`` with ``prefix`` removed from its keys (and from its ``_metadata``'s module
    names); keys without it kept (``keep_others``) or dropped."""
    def rename(k: str) -> Optional[str]:
        if k.startswith(prefix):
            return k[len(prefix):]
        if k == prefix[:-1]:  # the metadata entry of the prefix module itself
            return ''
        return k if keep_others else None

    out: Any = OrderedDict((rename(k), v) for k, v in sd.items() if rename(k) is not None)
    if metadata is not None:
        out._metadata = OrderedDict((rename(k), v) for k, v in metadata.items()
                                    if rename(k) is not None)
    return out


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


def _refused_real_global(message: str) -> bool:
    """Whether torch's weights_only error names a well-formed global (an object the loader
    refuses), not the garbled name a truncated file produces. A module already imported
    must have that attribute; nothing is imported for the check."""
    m = re.search(r'Unsupported global: GLOBAL (\S+) was not', message)
    parts = m.group(1).split('.') if m else []
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return False
    for i in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get('.'.join(parts[:i]))
        if obj is not None:
            try:
                for part in parts[i:]:
                    obj = getattr(obj, part)
            except AttributeError:
                return False
            return True
    return True


def read_checkpoint(filename: str, map_location: str = 'cpu',
                    logger: Optional[MMLogger] = None, trust: bool = False) -> Any:
    """Load a checkpoint file or URL with mmengine's ``CheckpointLoader``, with errors that
    name the file and say what it holds.

    A local file is checked first: it must exist, be a file and not be empty, and a
    PyTorch zip checkpoint must pass its CRC check (a corrupted file otherwise loads
    silently with wrong weights). A file that fails to load is diagnosed (truncated,
    corrupted, not a PyTorch checkpoint, or holding objects torch's ``weights_only``
    loader refuses). Returns what ``torch.load`` returns.

    ``trust=True`` (a local file only) unpickles with ``weights_only=False``: the file may
    run code. Only for a file the user vouches for (``tools/convert_checkpoint.py
    --trust``); every other load keeps torch's default.

    Raises:
        TypeError: ``filename`` is not a path.
        FileNotFoundError / IsADirectoryError: no such file.
        ValueError: the file is empty, truncated, corrupted, not a checkpoint, or refused
            by the ``weights_only`` loader.
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
    if trust and not local:
        raise ValueError(f'trust=True reads local files only; download {filename} first')
    try:
        if trust:
            return load_trusted(os.path.expanduser(filename), map_location=map_location)
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location,
                                                logger=logger)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as e:
        if not _refused_real_global(str(e)):  # a broken file, not a refused object
            raise ValueError(f'cannot load checkpoint {filename}: '
                             f'{_diagnose_file(os.path.expanduser(filename), e)}') from e
        refused = next((line.strip() for line in str(e).splitlines()
                        if 'unsupported global' in line.lower()), str(e).splitlines()[0])
        raise ValueError(
            f"cannot load checkpoint {filename} with torch's weights_only loader: it holds "
            f'an object the loader refuses ({refused}). mmslab allow-lists only what '
            'mmengine checkpoints need (mmslab.serialization). If you trust this file, '
            'convert it once to a plain state dict: python tools/convert_checkpoint.py '
            '--trust SRC DST --family pvt|swin (or torch.load(..., weights_only=False) it '
            'yourself and save its weights).') from e
    except Exception as e:  # noqa: BLE001 -- torch / pickle raise many types
        if not local:
            raise ValueError(f'cannot load checkpoint {filename}: {type(e).__name__}: {e}') from e
        raise ValueError(f'cannot load checkpoint {filename}: '
                         f'{_diagnose_file(os.path.expanduser(filename), e)}') from e


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
    widths = [sd[k].shape[0] for k in sorted(sd)
              if re.match(r'^stages\.\d+\.patch_embed\.proj\.weight$', k)]
    if 'patch_embed.proj.weight' in sd:
        widths = [sd['patch_embed.proj.weight'].shape[0]]
    kind = 'PVT-like' if any('.pos_embed' in k for k in sd) else 'Swin-like'
    return (f'a {kind} checkpoint with depths {[depths[i] for i in sorted(depths)]} and '
            f'embed dims {widths}')


def load_model_weights(model: nn.Module, checkpoint: Any, strict: bool = True,
                       logger: Optional[MMLogger] = None, source: str = 'checkpoint') -> None:
    """Load a whole model (a detector, a segmentor, a backbone; a model wrapper too) from a
    checkpoint object that :func:`read_checkpoint` returned.

    The weights are unwrapped by :func:`unwrap_state_dict` (``'state_dict'``, ``'model'``
    or bare, ``module.`` stripped, no prefix selection; a file without weights is
    explained, naming ``source``) and loaded with mmengine's public
    ``mmengine.runner.load_state_dict``: ``strict`` raises a ``RuntimeError`` listing the
    missing and unexpected keys, otherwise they are logged. The SLAB backbones' own
    load-time checks (folded vs trained form) run as for any ``load_state_dict``.
    """
    load_state_dict(model, unwrap_state_dict(checkpoint, prefix='', source=source),
                    strict=strict, logger=logger)
