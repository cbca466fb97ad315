"""The two exporters of ``torch.onnx.export`` and how mmslab calls each.

* ``'dynamo'``: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter
  (torch >= 2.9's default), translated to ONNX by onnxscript; opset >= 18 (default 18).
  The batch, height and width are made symbolic with ``dynamic_shapes``
  (``torch.export.Dim``), never with ``dynamic_axes`` alone: with this exporter
  ``dynamic_axes`` only renames the graph's input dims, and every inner shape stays the
  example's (the graph then fails in ONNX Runtime at any other size).
* ``'torchscript'``: ``torch.onnx.export(..., dynamo=False)`` (``dynamo`` passed only where
  torch has the argument), the tracing exporter, with ``dynamic_axes``; opset 17. mmdeploy
  1.3.1 converts with this one (:mod:`mmslab.mmdeploy_ort`).

The default is ``'dynamo'`` where the installed torch supports it -- ``torch.onnx.export``
has a ``dynamo`` argument, ``torch.export.Dim`` exists, ``onnxscript`` imports and a
three-op probe with symbolic sizes exports and converts -- else ``'torchscript'``
(:func:`dynamo_unsupported_reason`, from capabilities, not versions: torch 2.5.1 has the
argument and onnxscript 0.7.2 imports next to it, but its export fails the probe).

torch.export traces with sizes >= 2 (its "0/1 specialisation"): an example of batch 1
would freeze the batch to 1, so the dynamo export runs on a batch-2 example; and a
backbone's smallest output map must be at least 2x2 tokens for the graph to hold, which
:func:`min_export_size` reads from the backbone's ``feature_shapes`` (SLAB-Swin: 33 px,
SLAB-PVT: 64 px at 4 stages); the graph's declared range starts there.
"""
import inspect
import io
import logging
import re
import warnings
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

EXPORTERS = ('dynamo', 'torchscript')
OPSETS = {'dynamo': 18, 'torchscript': 17}
MIN_OPSETS = {'dynamo': 18, 'torchscript': 14}
EXPORTER_LABELS = {
    'dynamo': 'dynamo exporter (torch.onnx.export, dynamo=True: torch.export with '
              'dynamic_shapes)',
    'torchscript': 'TorchScript exporter (torch.onnx.export, dynamo=False)',
}


def torchscript_export_kwargs() -> Dict[str, Any]:
    """The keyword that selects ``torch.onnx.export``'s TorchScript exporter:
    ``{'dynamo': False}`` where the installed torch has the ``dynamo`` argument (its
    default is ``True`` from torch 2.9), ``{}`` where it has none (the TorchScript exporter
    is then the only one)."""
    params = inspect.signature(torch.onnx.export).parameters
    return {'dynamo': False} if 'dynamo' in params else {}


class _SymbolicSizeProbe(nn.Module):
    """What the SLAB backbones ask of the dynamo exporter, in three ops: a zero pad to a
    multiple of a symbolic size, a bilinear resize to a symbolic grid and a row gather."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = F.pad(x, [0, (w + 3) // 4 * 4 - w, 0, (h + 3) // 4 * 4 - h])
        x = F.interpolate(x, size=(h // 2, w // 2), mode='bilinear', align_corners=False)
        rows = torch.arange(x.shape[2], device=x.device)
        return x.index_select(2, rows - rows // x.shape[2] * x.shape[2])


@lru_cache(maxsize=1)
def _probe_error() -> Optional[str]:
    """None if :class:`_SymbolicSizeProbe` exports with symbolic batch / height / width and
    converts to ONNX here, else why not (the first line of the error)."""
    from torch.export import Dim
    quiet = [logging.getLogger(n) for n in ('torch._guards', 'torch._dynamo')]
    levels = [q.level for q in quiet]
    for q in quiet:  # (a failing probe is an answer, not an error to log)
        q.setLevel(logging.CRITICAL)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            ep = torch.export.export(_SymbolicSizeProbe(), (torch.zeros(2, 1, 12, 16),),
                                     dynamic_shapes=({0: Dim('b', min=1), 2: Dim('h', min=4),
                                                      3: Dim('w', min=4)},))
            torch.onnx.export(ep, (torch.zeros(2, 1, 12, 16),), None, dynamo=True,
                              opset_version=OPSETS['dynamo'], verbose=False)
    except Exception as e:  # noqa: BLE001 -- whatever the exporter raises is the answer
        lines = [line for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if 'Error' in line or 'violated' in line),
                      lines[0] if lines else repr(e))
        return f'{type(e).__name__}: {detail.strip()[:200]}'
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return None


def dynamo_unsupported_reason() -> Optional[str]:
    """Why the dynamo exporter cannot export the SLAB backbones here, or None where it
    can: ``torch.onnx.export`` needs a ``dynamo`` argument, torch ``torch.export.Dim``,
    ``onnxscript`` must import, and a three-op probe of what the backbones need (a pad to
    a multiple of a symbolic size, a bilinear resize to a symbolic grid, a row gather)
    must export with symbolic sizes and convert (torch 2.5's shape solver cannot prove a
    symbolic pad non-negative, and its ONNX translation takes only concrete resize
    sizes). Checked once per process."""
    reasons = []
    if 'dynamo' not in inspect.signature(torch.onnx.export).parameters:
        reasons.append(f'torch.onnx.export of torch {torch.__version__} has no `dynamo` '
                       'argument')
    if not hasattr(getattr(torch, 'export', None), 'Dim'):
        reasons.append(f'torch {torch.__version__} has no torch.export.Dim')
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        reasons.append(f'onnxscript does not import ({e}; it comes with the deploy extra: '
                       '`pip install -e .[deploy]`)')
    if not reasons:
        error = _probe_error()
        if error:
            reasons.append(f'torch {torch.__version__} cannot export symbolic sizes to ONNX '
                           f'with it (a symbolic pad / resize / gather probe fails: {error})')
    return '; '.join(reasons) or None


def default_exporter() -> str:
    """``'dynamo'`` where :func:`dynamo_unsupported_reason` finds nothing, else
    ``'torchscript'``."""
    return 'dynamo' if dynamo_unsupported_reason() is None else 'torchscript'


def resolve_exporter(exporter: Optional[str], owner: str = 'export') -> str:
    """``exporter`` checked (None: :func:`default_exporter`); a clear error for an unknown
    name and for ``'dynamo'`` where it cannot run."""
    if exporter is None:
        return default_exporter()
    if exporter not in EXPORTERS:
        raise ValueError(f'{owner}: exporter must be one of {list(EXPORTERS)}, got '
                         f'{exporter!r}')
    if exporter == 'dynamo':
        reason = dynamo_unsupported_reason()
        if reason:
            raise ValueError(f"{owner}: exporter 'dynamo' is not supported here: {reason}. "
                             "Use exporter 'torchscript' (accepted here).")
    return exporter


def resolve_opset(exporter: str, opset: Optional[int], owner: str = 'export') -> int:
    """``opset`` (None: the exporter's default, 18 dynamo / 17 TorchScript), checked
    against the exporter's minimum."""
    if opset is None:
        return OPSETS[exporter]
    if opset < MIN_OPSETS[exporter]:
        raise ValueError(f'{owner}: the {exporter} exporter needs opset >= '
                         f'{MIN_OPSETS[exporter]}, got {opset}')
    return opset


def min_export_size(model: nn.Module, limit: int = 4096) -> int:
    """The smallest input side for which every output map of ``model`` is at least 2
    tokens along both axes (from its ``feature_shapes(h, w)``); 2 for a model without."""
    shapes = getattr(model, 'feature_shapes', None)
    if shapes is None:
        return 2
    for s in range(2, limit + 1):
        if all(min(hw) >= 2 for _, hw in shapes(s, s)):
            return s
    raise ValueError(f'{type(model).__name__}: no input side up to {limit} gives output maps '
                     'of at least 2x2')


def dynamic_shapes(model: nn.Module, side: Optional[int] = None) -> Tuple[Dict[int, Any], ...]:
    """``dynamic_shapes`` of the input: symbolic batch (>= 1) and height / width (>= ``side``,
    default :func:`min_export_size`)."""
    from torch.export import Dim
    side = min_export_size(model) if side is None else side
    return ({0: Dim('batch', min=1), 2: Dim('height', min=side),
             3: Dim('width', min=side)},)


_SUGGESTION = re.compile(r"^\s*(\w+) = (.*)$")
_MIN_SIDE = re.compile(r"^Dim\('(?:height|width)', min=(\d+)\)$")


def _raised_minimum(error: Exception) -> Optional[int]:
    """The side torch.export asks for when its only objection to :func:`dynamic_shapes` is
    a larger minimum height / width (e.g. a spatial-reduction map that must be 2x2 too);
    None when it suggests anything else (a frozen size: the export must fail)."""
    text = str(error)
    if 'Suggested fixes:' not in text:
        return None
    fixes = [_SUGGESTION.match(line) for line in
             text.split('Suggested fixes:', 1)[1].strip().split('\n\n')[0].splitlines()]
    mins = [_MIN_SIDE.match(m.group(2)) if m else None for m in fixes]
    if not mins or not all(mins):
        return None
    return max(int(m.group(1)) for m in mins)


def exported_program(model: nn.Module, x: torch.Tensor) -> Tuple[Any, List[str]]:
    """``torch.export.export`` of ``model`` on ``x`` with :func:`dynamic_shapes` (batch >= 1,
    sides >= :func:`min_export_size`, raised once where torch.export asks only for a larger
    minimum side) and notes: the range constraints it declares. Any other constraint
    violation -- a size the model freezes -- raises."""
    side = min_export_size(model)
    notes = []
    try:
        ep = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(model, side))
    except Exception as e:  # noqa: BLE001 -- torch.export's UserError moved between versions
        raised = _raised_minimum(e)
        if raised is None or raised <= side:
            raise
        notes.append(f'torch.export raised the minimum height / width from {side} to {raised} '
                     '(a map inside the model must be at least 2x2 too)')
        side = raised
        ep = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(model, side))
    notes.append('range constraints of the exported program: ' + ', '.join(
        f'{sym} in [{r.lower}, {r.upper}]' for sym, r in ep.range_constraints.items()))
    return ep, notes


def _torchscript(model: nn.Module, x: torch.Tensor, opset: int, names: List[str],
                 dynamic: bool) -> Tuple[bytes, List[str]]:
    axes = None
    if dynamic:
        axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({n: {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'} for n in names})
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), buf, opset_version=opset, input_names=['input'],
                          output_names=names, dynamic_axes=axes, do_constant_folding=True,
                          **torchscript_export_kwargs())
    tracer = list(dict.fromkeys(
        f'TracerWarning {w.filename}:{w.lineno}: {w.message}' for w in caught
        if issubclass(w.category, torch.jit.TracerWarning)))
    return buf.getvalue(), tracer


def _dynamo(model: nn.Module, x: torch.Tensor, opset: int, names: List[str],
            dynamic: bool) -> Tuple[bytes, List[str]]:
    notes: List[str] = []
    if dynamic:
        side = min_export_size(model)
        if min(x.shape[2:]) < side:
            raise ValueError(f'{type(model).__name__}: the dynamo export needs an example of '
                             f'at least {side}x{side} (smallest output map 2x2), got '
                             f'{tuple(x.shape)}')
        if x.shape[0] < 2:  # torch.export would freeze a batch of 1 (0/1 specialisation)
            x = x.expand(2, *x.shape[1:]).contiguous()
            notes.append('exported on a batch-2 copy of the example (torch.export freezes '
                         'a size-1 batch)')
        # torch.export first (its constraint check raises on a frozen size), then its graph
        # to ONNX: torch.onnx.export would fall back to draft_export on such an error
        model, more = exported_program(model, x)
        notes += more
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset,
                                    input_names=['input'], output_names=names, verbose=False)
    proto = program.model_proto
    if dynamic:
        _name_dims(proto, model)
    return proto.SerializeToString(), notes


def _name_dims(proto: Any, ep: Any) -> None:
    """Name the graph's symbolic dims as :func:`dynamic_shapes` does (``batch``, ``height``,
    ``width``; outputs get expressions of them) instead of torch.export's ``s0``, ``s1``."""
    val = next(n.meta['val'] for n in ep.graph.nodes if n.op == 'placeholder'
               and n.name in ep.graph_signature.user_inputs)
    rename = {str(val.shape[i]): name for i, name in ((0, 'batch'), (2, 'height'), (3, 'width'))
              if isinstance(val.shape[i], torch.SymInt)}
    if not rename:
        return
    pattern = re.compile(r'\b(' + '|'.join(map(re.escape, rename)) + r')\b')
    graph = proto.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: rename[m.group(1)], dim.dim_param)


@torch.no_grad()
def export_onnx(model: nn.Module, x: torch.Tensor, exporter: str, opset: int,
                names: Sequence[str], dynamic: bool = True) -> Tuple[bytes, List[str]]:
    """``model`` (eval mode) on the example ``x`` to a serialised ONNX model with
    ``exporter`` (checked by the caller: :func:`resolve_exporter`). Returns it and the
    export's notes: the TorchScript exporter's distinct ``TracerWarning`` messages (values
    the trace may have frozen), the dynamo exporter's range constraints."""
    model.eval()  # (not fn(model.eval(), ...): some modules' train() returns None)
    fn = _dynamo if exporter == 'dynamo' else _torchscript
    return fn(model, x, opset, list(names), dynamic)
