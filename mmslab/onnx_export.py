"""ONNX export of the (folded) SLAB backbones, checked in ONNX Runtime.

:func:`export_backbone` folds a SLAB backbone (``switch_to_deploy``, unless it is folded
already), exports it with ``torch.onnx.export``'s **TorchScript exporter** (opset 17) with a
dynamic batch, height and width, opens the result in ONNX Runtime (CPU execution provider)
and compares it with the PyTorch module at several input shapes that differ from the
export shape (odd sizes, batch 1 and 2). Only a file that passes the check is written, and
atomically (:mod:`mmslab.fileio`): an interrupted or failed export leaves the old file or
none, and the output may never be one of the inputs (config, checkpoint).

The exporter is chosen explicitly: torch >= 2.9 makes ``torch.onnx.export`` default to
its dynamo exporter (``dynamo=True``), so every export here passes ``dynamo=False`` where
``torch.onnx.export`` has that argument (:func:`torchscript_export_kwargs`, found from its
signature, not from the version) -- the graphs, tolerances and dynamic axes below are those
of the TorchScript (tracing) exporter.

The error of a check is, per output map, ``max |ort - torch| / max |torch|``, and the
reported figure is the largest over the maps; the target is ``<= 1e-4`` in float32.

:func:`load_backbone` gets the backbone from an mmdet / mmseg config (+ checkpoint of the
whole model, trained or folded by ``tools/deploy.py``) or from a released ImageNet file
(``family='pvt' | 'swin'``, loaded through ``init_cfg=dict(type='Pretrained', ...)``).
``tools/export_onnx.py`` is the command line over both.

Needs the ``deploy`` extra (``onnxruntime``; ``pip install -e .[deploy]``, or
``MMSLAB_EXTRAS=deploy bash tools/setup_env.sh``); the export itself needs only torch.
"""
import inspect
import io
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .fileio import atomic_write, check_outputs
from .timing import cpu_name, interleaved_rounds, median, spread, time_calls, warm_up

Shape = Tuple[int, int, int, int]

OPSET = 17
#: default export input (batch, channels, height, width)
EXPORT_SHAPE: Shape = (1, 3, 224, 320)
#: default check inputs: none equals the export shape; odd sizes, batch 1 and 2
CHECK_SHAPES: Tuple[Shape, ...] = ((1, 3, 193, 257), (2, 3, 255, 161), (1, 3, 321, 479))
RTOL = 1e-4
FAMILIES = {'pvt': 'SLABPVT', 'swin': 'SLABSwin'}
#: how every export of mmslab is made (see the module's docstring)
EXPORTER = 'TorchScript exporter (torch.onnx.export, dynamo=False)'


def torchscript_export_kwargs() -> Dict[str, Any]:
    """The keyword that selects ``torch.onnx.export``'s TorchScript exporter:
    ``{'dynamo': False}`` where the installed torch has the ``dynamo`` argument (its
    default is ``True`` from torch 2.9), ``{}`` where it has none (the TorchScript exporter
    is then the only one)."""
    params = inspect.signature(torch.onnx.export).parameters
    return {'dynamo': False} if 'dynamo' in params else {}


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
                      opset: int = OPSET,
                      dynamic: bool = True) -> Tuple[bytes, List[str]]:
    """``torch.onnx.export`` of ``model`` (in eval mode) on a random input of ``shape``,
    with the TorchScript exporter (:data:`EXPORTER`).

    Returns the serialised model and the distinct ``TracerWarning`` messages of the export
    (each is a value the trace may have frozen). With ``dynamic`` the batch, height and
    width of the input and of every output map are dynamic axes.
    """
    model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    n_out = len(_as_tuple(model(x)))
    names = output_names(n_out)
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
        f'{w.filename}:{w.lineno}: {w.message}' for w in caught
        if issubclass(w.category, torch.jit.TracerWarning)))
    return buf.getvalue(), tracer


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
    opset: int
    export_shape: Shape
    export_seconds: float
    onnx_bytes: int
    ort_version: str
    checks: List[ShapeCheck] = field(default_factory=list)
    tracer_warnings: List[str] = field(default_factory=list)
    rtol: float = RTOL
    exporter: str = EXPORTER

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=0.0)

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.rtol

    def table(self) -> str:
        fmt = lambda s: 'x'.join(str(v) for v in s)  # noqa: E731
        lines = [f'{self.model}: ONNX opset {self.opset}, {self.exporter}, exported at '
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
        if self.tracer_warnings:
            lines.append(f'{len(self.tracer_warnings)} TracerWarning(s) during the export '
                         '(values the trace may have frozen):')
            lines += [f'  {w}' for w in self.tracer_warnings]
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
                    opset: int = OPSET,
                    threads: Optional[int] = None,
                    fold: bool = True,
                    inputs: Optional[Dict[str, Optional[str]]] = None,
                    raise_on_failure: bool = True) -> ExportReport:
    """Fold (``fold`` and not yet folded), export to ONNX with dynamic batch / height /
    width, check in ONNX Runtime at ``check_shapes`` and write ``out`` (if given) only if
    the largest relative error is ``<= rtol``.

    ``inputs`` (``{description: path}`` of the files the model came from) are never
    overwritten: ``out`` may not be or resolve to one of them. Raises ``RuntimeError``
    with the report if the check fails (``raise_on_failure``), before writing anything.
    """
    if not check_shapes:
        raise ValueError('export_backbone: give at least one check shape')
    if out is not None:
        check_outputs({'ONNX file': out}, dict(inputs or {}), 'export_backbone')
    ort = require_onnxruntime()
    folded_now = fold_backbone(model) if fold else False
    model.eval()
    t0 = time.perf_counter()
    data, tracer = export_onnx_bytes(model, tuple(shape), opset)
    seconds = time.perf_counter() - t0
    session = ort_session(data, threads)
    report = ExportReport(out, type(model).__name__, folded_now, opset, tuple(shape), seconds,
                          len(data), ort.__version__, tracer_warnings=tracer, rtol=rtol)
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


# ------------------------------------------------------------------------------ latency
@dataclass
class OrtTiming:
    model: str
    size: Tuple[int, int]
    torch_times: List[float] = field(default_factory=list)
    ort_times: List[float] = field(default_factory=list)
    rel_error: float = float('nan')    # ORT vs PyTorch at this size
    graph: str = 'dynamic'             # or 're-exported at this size' (frozen shapes)

    @property
    def torch_median(self) -> float:
        return median(self.torch_times)

    @property
    def ort_median(self) -> float:
        return median(self.ort_times)


@dataclass
class OrtBenchmarkResult:
    timings: List[OrtTiming]
    threads: int
    repeat: int
    warmup: int
    export_size: Tuple[int, int]
    env: Dict[str, str]
    labels: Dict[str, str] = field(default_factory=dict)
    stock: Dict[str, str] = field(default_factory=dict)  # model -> its stock twin

    def get(self, model: str, size) -> Optional[OrtTiming]:
        return next((t for t in self.timings
                     if t.model == model and tuple(t.size) == tuple(size)), None)

    def table(self) -> str:
        lines = [
            f'ONNX Runtime {self.env.get("onnxruntime", "?")} (CPU EP, intra-op threads '
            f'{self.threads}, sequential) vs PyTorch {self.env.get("torch", "?")} '
            f'(torch.no_grad, set_num_threads({self.threads})); batch 1, fp32; median '
            f'[min, max] of {self.repeat} interleaved rounds after {self.warmup} warm-up; '
            f'ONNX exported once at {self.export_size[0]}x{self.export_size[1]} with dynamic '
            f'batch / height / width (opset {OPSET}, {EXPORTER}); {self.env.get("cpu", "")}',
            '',
            '| backbone | input (HxW) | PyTorch s | ONNX Runtime s | ORT / PyTorch '
            '| ORT vs stock ORT | ORT rel. error | ONNX graph |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for t in self.timings:
            stock = self.get(self.stock.get(t.model, ''), t.size)
            vs = (f'{t.ort_median / stock.ort_median:.2f}x '
                  f'({min(t.ort_times) / min(stock.ort_times):.2f}x)'
                  if stock and t.ort_times and stock.ort_times else '')
            ratio = (f'{t.ort_median / t.torch_median:.2f}x '
                     f'({min(t.ort_times) / min(t.torch_times):.2f}x)' if t.ort_times else '-')
            h, w = t.size
            lines.append(
                f'| {self.labels.get(t.model, t.model)} | {h}x{w} | {spread(t.torch_times)} '
                f'| {spread(t.ort_times)} | {ratio} | {vs} | {t.rel_error:.1e} | {t.graph} |')
        lines += ['', 'ORT / PyTorch = median latency ratio (< 1: ONNX Runtime faster), '
                  'ratio of the minima in parentheses; ORT vs stock ORT = ONNX Runtime '
                  'latency / that of the mmdet backbone of the same family in ONNX Runtime '
                  '(medians, minima); ORT rel. error = max|ort - torch| / '
                  'max|torch| over the output maps at that size; ONNX graph "re-exported" = '
                  'the dynamic graph was wrong at this size (a shape frozen at export), so '
                  'the model was exported again at this size.']
        return '\n'.join(lines)


def ort_latency_benchmark(models: Dict[str, nn.Module],
                          sizes: Sequence[Tuple[int, int]],
                          repeat: int = 3,
                          warmup: int = 1,
                          threads: int = 2,
                          labels: Optional[Dict[str, str]] = None,
                          stock: Optional[Dict[str, str]] = None,
                          log=print) -> OrtBenchmarkResult:
    """ONNX Runtime vs PyTorch latency of ``models`` (eval mode, exported as they are:
    pass folded SLAB backbones to measure the folded form) at every size, batch 1.

    Each model is exported once (dynamic axes) at the first size. Per size: one untimed
    forward of every (model, runtime) pair also gives ORT's relative error against PyTorch
    (a graph that is wrong at this size -- a frozen shape -- is re-exported at this size
    and marked), ``warmup - 1`` more untimed rounds, then ``repeat`` rounds timing one
    forward of every pair, the order rotating per round. Same thread count for both
    (``torch.set_num_threads`` / ORT intra-op threads)."""
    ort = require_onnxruntime()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        h0, w0 = sizes[0]
        sessions = {}
        for name, model in models.items():
            model.eval()
            data, _ = export_onnx_bytes(model, (1, 3, h0, w0))
            sessions[name] = ort_session(data, threads)
            log(f'exported {name} ({len(data) / 2 ** 20:.1f} MiB)')
        timings: List[OrtTiming] = []
        pairs = [(n, rt) for n in models for rt in ('torch', 'ort')]
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            cur = {n: OrtTiming(n, (h, w)) for n in models}
            with torch.no_grad():
                for name, model in models.items():
                    check = compare_with_torch(sessions[name], model, [(1, 3, h, w)])[0]
                    if check.max_rel_error > 1e-3:
                        data, _ = export_onnx_bytes(model, (1, 3, h, w))
                        sessions[name] = ort_session(data, threads)
                        check = compare_with_torch(sessions[name], model, [(1, 3, h, w)])[0]
                        cur[name].graph = 're-exported at this size'
                    if check.error or not check.shapes_match:
                        cur[name].graph = ('FAILED in ORT: '
                                           + _short(check.error or 'wrong output shapes'))
                    cur[name].rel_error = check.max_rel_error
                feeds = {n: {s.get_inputs()[0].name: x.numpy()} for n, s in sessions.items()}
                calls = {(n, 'torch'): (lambda n=n: models[n](x)) for n in models}
                calls.update({(n, 'ort'): (lambda n=n: sessions[n].run(None, feeds[n]))
                              for n in models})

                def failed(pair) -> bool:
                    return pair[1] == 'ort' and cur[pair[0]].graph.startswith('FAILED')

                def timed(pair) -> None:
                    if not failed(pair):
                        name, rt = pair
                        (cur[name].torch_times if rt == 'torch'
                         else cur[name].ort_times).append(time_calls(calls[pair]))

                # (the check above was the first untimed call of every pair)
                warm_up(pairs, max(warmup - 1, 0),
                        lambda _, pair: None if failed(pair) else calls[pair]())
                interleaved_rounds(pairs, repeat, timed)
            for t in cur.values():
                log(f'{t.model:>20} {h}x{w}: PyTorch {t.torch_median:.3f} s, ORT '
                    f'{t.ort_median:.3f} s, rel. error {t.rel_error:.1e} ({t.graph})')
                timings.append(t)
    finally:
        torch.set_num_threads(prev)
    env = dict(torch=torch.__version__, onnxruntime=ort.__version__,
               python=platform.python_version(), cpu=cpu_name())
    return OrtBenchmarkResult(timings, threads, repeat, warmup, (h0, w0), env,
                              dict(labels or {}), dict(stock or {}))
