"""ONNX export of the (folded) SLAB backbones, checked in ONNX Runtime.

:func:`export_backbone` folds a SLAB backbone (``switch_to_deploy``, unless it is folded
already), exports it with a dynamic batch, height and width -- with ``torch.onnx.export``'s
**dynamo exporter** (torch.export with ``dynamic_shapes``, opset 18) where the installed
torch supports it, else its **TorchScript exporter** (``dynamic_axes``, opset 17); the
choice and its rule are in :mod:`mmslab.onnx_exporters`, ``exporter=`` picks one -- opens
the result in ONNX Runtime (CPU execution provider) and compares it with the PyTorch module
at several input shapes that differ from the export shape (odd sizes, batch 1 and 2). Only
a file that passes the check is written, and atomically (:mod:`mmslab.fileio`): an
interrupted or failed export leaves the old file or none, and the output may never be one
of the inputs (config, checkpoint).

The error of a check is, per output map, ``max |ort - torch| / max |torch|``, and the
reported figure is the largest over the maps; the target is ``<= 1e-4`` in float32.

:func:`load_backbone` gets the backbone from an mmdet / mmseg config (+ checkpoint of the
whole model, trained or folded by ``tools/deploy.py``) or from a released ImageNet file
(``family='pvt' | 'swin'``, loaded through ``init_cfg=dict(type='Pretrained', ...)``).
``tools/export_onnx.py`` is the command line over both. The ONNX Runtime latency benchmark
is :mod:`mmslab.onnx_latency`.

Needs the ``deploy`` extra (``onnxruntime``, ``onnxscript``; ``pip install -e .[deploy]``,
or ``MMSLAB_EXTRAS=deploy bash tools/setup_env.sh``).
"""
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .fileio import atomic_write, check_outputs
from .onnx_exporters import (EXPORTER_LABELS, export_onnx, resolve_exporter,
                             resolve_opset, torchscript_export_kwargs)

__all__ = ['load_backbone', 'fold_backbone', 'export_onnx_bytes', 'export_backbone',
           'compare_with_torch', 'ort_session', 'ExportReport', 'ShapeCheck',
           'torchscript_export_kwargs', 'CHECK_SHAPES', 'EXPORT_SHAPE', 'RTOL', 'FAMILIES']

Shape = Tuple[int, int, int, int]

#: default export input (batch, channels, height, width)
EXPORT_SHAPE: Shape = (1, 3, 224, 320)
#: default check inputs: none equals the export shape; odd sizes (none a multiple of 32),
#: batch 1 and 2; 97x141 is smaller than SLAB-Swin-T's first window (56 tokens = 224 px)
CHECK_SHAPES: Tuple[Shape, ...] = ((1, 3, 193, 257), (2, 3, 255, 161), (1, 3, 321, 479),
                                   (2, 3, 97, 141))
RTOL = 1e-4
FAMILIES = {'pvt': 'SLABPVT', 'swin': 'SLABSwin'}


def require_onnxruntime():
    """Import ``onnxruntime`` or say how to install it."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            'ONNX Runtime is not installed: install the deploy extra, '
            '`pip install -e .[deploy]` or `MMSLAB_EXTRAS=deploy bash '
            'tools/setup_env.sh` (see README, "Deploy to ONNX Runtime")') from e
    return onnxruntime


# ------------------------------------------------------------------------------ models
def load_backbone(config: Optional[str] = None,
                  checkpoint: Optional[str] = None,
                  family: Optional[str] = None,
                  arch: Union[str, dict] = 'tiny',
                  cfg_options: Optional[dict] = None,
                  **backbone_kwargs: Any) -> nn.Module:
    """The backbone to export, in eval mode.

    * ``config`` (an mmdet / mmseg config): its model is built; ``checkpoint`` (the whole
      model's, trained or folded with ``tools/deploy.py`` and then loaded with the
      ``<stem>_config.py`` that file came with) is loaded strictly, or without one the
      backbone's own ``init_weights()`` runs (its ``init_cfg``). Returns ``model.backbone``.
    * ``family`` (``'pvt'`` / ``'swin'``): ``SLABPVT`` / ``SLABSwin`` of ``arch`` with
      ``init_cfg=dict(type='Pretrained', checkpoint=checkpoint)`` (a released ImageNet
      file, or any file that init_cfg accepts); ``backbone_kwargs`` go to the constructor.
    """
    if (config is None) == (family is None):
        raise ValueError('load_backbone: give either config (an mmdet / mmseg config) or '
                         f"family ({' / '.join(FAMILIES)}), not both or neither")
    if family is not None:
        from mmengine.registry import MODELS

        import mmslab  # noqa: F401  (registers the backbones)
        if family not in FAMILIES:
            raise ValueError(f'load_backbone: family must be one of {sorted(FAMILIES)}, '
                             f'got {family!r}')
        init_cfg = None if checkpoint is None else dict(type='Pretrained',
                                                         checkpoint=checkpoint)
        model = MODELS.build(dict(type=FAMILIES[family], arch=arch, init_cfg=init_cfg,
                                  **backbone_kwargs))
        model.init_weights()
        return model.eval()

    from .deploy import build_model_from_config
    from .checkpoint_io import load_model_weights, read_checkpoint
    model = build_model_from_config(config, cfg_options)
    if checkpoint is None:
        model.backbone.init_weights()
    else:
        ckpt = read_checkpoint(checkpoint, map_location='cpu')
        if not isinstance(ckpt, dict):
            raise ValueError(f'{checkpoint} holds no state dict: it is a {type(ckpt).__name__}')
        load_model_weights(model, ckpt, strict=True, source=checkpoint)
    return model.backbone.eval()


def fold_backbone(model: nn.Module) -> bool:
    """Put ``model`` in eval mode and fold its norms if it is an unfolded SLAB backbone.
    Returns whether it folded now (False: folded already, or not a SLAB backbone)."""
    from .models.base_backbone import SLABBackbone
    model.eval()
    if isinstance(model, SLABBackbone) and not getattr(model, 'deploy', False):
        model.switch_to_deploy()
        return True
    return False


# ------------------------------------------------------------------------------ export
def output_names(num: int) -> List[str]:
    return [f'out{i}' for i in range(num)]


@torch.no_grad()
def export_onnx_bytes(model: nn.Module,
                      shape: Shape = EXPORT_SHAPE,
                      opset: Optional[int] = None,
                      dynamic: bool = True,
                      exporter: Optional[str] = None) -> Tuple[bytes, List[str]]:
    """``torch.onnx.export`` of ``model`` (in eval mode) on a random input of ``shape`` with
    ``exporter`` (None: the default, :func:`~mmslab.onnx_exporters.default_exporter`) and
    ``opset`` (None: 18 dynamo, 17 TorchScript).

    Returns the serialised model and the export's notes (TorchScript: the distinct
    ``TracerWarning`` messages, each a value the trace may have frozen; dynamo: the
    exported program's range constraints). With ``dynamic`` the batch, height and width
    of the input and of every output map are symbolic (dynamo: ``dynamic_shapes``;
    TorchScript: ``dynamic_axes``).
    """
    exporter = resolve_exporter(exporter, 'export_onnx_bytes')
    opset = resolve_opset(exporter, opset, 'export_onnx_bytes')
    model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    names = output_names(len(_as_tuple(model(x))))
    return export_onnx(model, x, exporter, opset, names, dynamic)


def ort_session(model: Union[bytes, str], threads: Optional[int] = None):
    """An ONNX Runtime CPU session of a file or serialised model (``threads``: intra-op
    threads, default ORT's own choice; one inter-op thread, sequential execution)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle intra-op threads sleep instead of spinning, so that the pool does not compete
    # with whatever runs next in the process (PyTorch, in the interleaved latency rounds)
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=['CPUExecutionProvider'])


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[:n - 3] + '...'


def _as_tuple(out: Any) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@dataclass
class ShapeCheck:
    shape: Shape
    rel_errors: List[float]          # per output map
    out_shapes: List[Tuple[int, ...]]
    shapes_match: bool
    error: Optional[str] = None      # ONNX Runtime's error, if the run failed

    @property
    def max_rel_error(self) -> float:
        return max(self.rel_errors) if self.shapes_match and self.rel_errors else float('inf')


@torch.no_grad()
def compare_with_torch(session, model: nn.Module, shapes: Sequence[Shape],
                       seed: int = 0) -> List[ShapeCheck]:
    """Run ``session`` and ``model`` on the same random inputs of every shape:
    ``max |ort - torch| / max |torch|`` per output map (``inf`` for a wrong shape or a
    failed run, whose error message is kept)."""
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        ref = [t.float().numpy() for t in _as_tuple(model(x))]
        try:
            outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        except Exception as e:  # ORT raises its own exception types
            msg = str(e).strip().splitlines()
            checks.append(ShapeCheck(tuple(shape), [], [], False, msg[0] if msg else repr(e)))
            continue
        match = len(outs) == len(ref) and all(o.shape == r.shape for o, r in zip(outs, ref))
        errs = [float(np.abs(o - r).max() / max(float(np.abs(r).max()), 1e-12)) if match
                else float('inf') for o, r in zip(outs, ref)]
        checks.append(ShapeCheck(tuple(shape), errs, [tuple(o.shape) for o in outs], match))
    return checks


@dataclass
class ExportReport:
    out: Optional[str]
    model: str
    folded_now: bool
    exporter: str                    # 'dynamo' | 'torchscript'
    opset: int
    export_shape: Shape
    export_seconds: float
    onnx_bytes: int
    ort_version: str
    checks: List[ShapeCheck] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # TracerWarnings / range constraints
    rtol: float = RTOL

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.rtol

    def table(self) -> str:
        fmt = lambda s: 'x'.join(str(v) for v in s)  # noqa: E731
        lines = [f'{self.model}: ONNX opset {self.opset}, {EXPORTER_LABELS[self.exporter]}, '
                 f'exported at '
                 f'{fmt(self.export_shape)} (dynamic batch / height / width) in '
                 f'{self.export_seconds:.1f} s, '
                 f'{self.onnx_bytes / 2 ** 20:.1f} MiB; ONNX Runtime {self.ort_version} '
                 f'(CPU EP) vs PyTorch {torch.__version__}, float32:',
                 '', '| input (BxCxHxW) | output maps | max rel. error |', '|---|---|---|']
        for c in self.checks:
            err = (f'{c.max_rel_error:.2e}' if c.shapes_match else
                   f'FAILED: {_short(c.error)}' if c.error else 'WRONG SHAPES')
            lines.append(f'| {fmt(c.shape)} | {", ".join(fmt(s) for s in c.out_shapes)} '
                         f'| {err} |')
        lines.append('')
        lines.append(f'max relative error {self.max_rel_error:.2e} '
                     f'({"<=" if self.passed else ">"} {self.rtol:g}: '
                     f'{"passed" if self.passed else "FAILED"})')
        if self.notes:
            lines.append('export notes (TracerWarnings: values the trace may have frozen; '
                         'range constraints: where the graph is declared valid):')
            lines += [f'  {w}' for w in self.notes]
        return '\n'.join(lines)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['max_rel_error'] = self.max_rel_error
        d['passed'] = self.passed
        return d


def export_backbone(model: nn.Module,
                    out: Optional[str],
                    shape: Shape = EXPORT_SHAPE,
                    check_shapes: Sequence[Shape] = CHECK_SHAPES,
                    rtol: float = RTOL,
                    opset: Optional[int] = None,
                    threads: Optional[int] = None,
                    fold: bool = True,
                    inputs: Optional[Dict[str, Optional[str]]] = None,
                    raise_on_failure: bool = True,
                    exporter: Optional[str] = None) -> ExportReport:
    """Fold (``fold`` and not yet folded), export to ONNX with dynamic batch / height /
    width, check in ONNX Runtime at ``check_shapes`` and write ``out`` (if given) only if
    the largest relative error is ``<= rtol``. ``exporter``: ``'dynamo'`` /
    ``'torchscript'`` (None: the default); ``opset`` None: the exporter's default.

    ``inputs`` (``{description: path}`` of the files the model came from) are never
    overwritten: ``out`` may not be or resolve to one of them. Raises ``RuntimeError``
    with the report if the check fails (``raise_on_failure``), before writing anything.
    """
    if not check_shapes:
        raise ValueError('export_backbone: give at least one check shape')
    exporter = resolve_exporter(exporter, 'export_backbone')
    opset = resolve_opset(exporter, opset, 'export_backbone')
    if out is not None:
        check_outputs({'ONNX file': out}, dict(inputs or {}), 'export_backbone')
    ort = require_onnxruntime()
    folded_now = fold_backbone(model) if fold else False
    model.eval()
    t0 = time.perf_counter()
    data, notes = export_onnx_bytes(model, tuple(shape), opset, exporter=exporter)
    seconds = time.perf_counter() - t0
    session = ort_session(data, threads)
    report = ExportReport(out, type(model).__name__, folded_now, exporter, opset, tuple(shape),
                          seconds, len(data), ort.__version__, notes=notes, rtol=rtol)
    report.checks = compare_with_torch(session, model, check_shapes)
    if not report.passed:
        if raise_on_failure:
            raise RuntimeError('the exported ONNX model does not match PyTorch'
                               + (f'; not writing {out}' if out else '') + ':\n'
                               + report.table())
        return report
    if out is not None:
        with atomic_write(out, 'wb') as f:
            f.write(data)
    return report
