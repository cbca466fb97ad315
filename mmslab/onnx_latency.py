"""ONNX Runtime vs PyTorch latency of exported backbones (``tools/benchmark.py --ort``).

Every model is exported once per exporter (``'dynamo'`` / ``'torchscript'``,
:mod:`mmslab.onnx_exporters`) at the first size with a dynamic batch / height / width; at
every size ONNX Runtime is checked against PyTorch and timed next to it, interleaved round
by round. Needs the deploy extra.
"""
import platform
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .onnx_export import _short, compare_with_torch, export_onnx_bytes, ort_session, \
    require_onnxruntime
from .onnx_exporters import OPSETS, default_exporter, resolve_exporter
from .timing import cpu_name, interleaved_rounds, median, spread, time_calls, warm_up


@dataclass
class OrtTiming:
    model: str
    size: Tuple[int, int]
    exporter: str = 'torchscript'
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
    exporters: List[str] = field(default_factory=lambda: ['torchscript'])

    def get(self, model: str, size, exporter: Optional[str] = None) -> Optional[OrtTiming]:
        return next((t for t in self.timings
                     if t.model == model and tuple(t.size) == tuple(size)
                     and (exporter is None or t.exporter == exporter)), None)

    def table(self) -> str:
        lines = [
            f'ONNX Runtime {self.env.get("onnxruntime", "?")} (CPU EP, intra-op threads '
            f'{self.threads}, sequential) vs PyTorch {self.env.get("torch", "?")} '
            f'(torch.no_grad, set_num_threads({self.threads})); batch 1, fp32; median '
            f'[min, max] of {self.repeat} interleaved rounds after {self.warmup} warm-up; '
            f'ONNX exported once at {self.export_size[0]}x{self.export_size[1]} with dynamic '
            f'batch / height / width by each exporter (dynamo: opset {OPSETS["dynamo"]}, '
            f'dynamic_shapes; torchscript: opset {OPSETS["torchscript"]}, dynamic_axes); '
            f'{self.env.get("cpu", "")}',
            '',
            '| backbone | exporter | input (HxW) | PyTorch s | ONNX Runtime s | ORT / PyTorch '
            '| ORT vs stock ORT | ORT rel. error | ONNX graph |',
            '|---|---|---|---|---|---|---|---|---|',
        ]
        for t in self.timings:
            stock = self.get(self.stock.get(t.model, ''), t.size, t.exporter)
            vs = (f'{t.ort_median / stock.ort_median:.2f}x '
                  f'({min(t.ort_times) / min(stock.ort_times):.2f}x)'
                  if stock and t.ort_times and stock.ort_times else '')
            ratio = (f'{t.ort_median / t.torch_median:.2f}x '
                     f'({min(t.ort_times) / min(t.torch_times):.2f}x)' if t.ort_times else '-')
            h, w = t.size
            lines.append(
                f'| {self.labels.get(t.model, t.model)} | {t.exporter} | {h}x{w} '
                f'| {spread(t.torch_times)} '
                f'| {spread(t.ort_times)} | {ratio} | {vs} | {t.rel_error:.1e} | {t.graph} |')
        lines += ['', 'ORT / PyTorch = median latency ratio (< 1: ONNX Runtime faster), '
                  'ratio of the minima in parentheses; ORT vs stock ORT = ONNX Runtime '
                  'latency / that of the mmdet backbone of the same family in ONNX Runtime, '
                  'same exporter (medians, minima); PyTorch s is the same eager forward in '
                  'every row of a model; ORT rel. error = max|ort - torch| / '
                  'max|torch| over the output maps at that size; ONNX graph "re-exported" = '
                  'the dynamic graph was wrong at this size (a shape frozen at export), so '
                  'the model was exported again at this size; "static export" = the '
                  'exporter refused the dynamic export (a shape the model freezes), so '
                  'the model was exported for this size only.']
        return '\n'.join(lines)


def _export(model: nn.Module, shape, exporter: str, threads: int, dynamic: bool = True):
    """An ORT session of ``model`` exported at ``shape`` (dynamic unless told), and how."""
    try:
        data, _ = export_onnx_bytes(model, shape, exporter=exporter, dynamic=dynamic)
        how = 'dynamic' if dynamic else 're-exported at this size'
    except Exception as e:  # noqa: BLE001 -- the exporters raise many types
        if not dynamic:
            raise
        # a model that freezes a shape (mmdet's) is refused by torch.export's dynamic check
        data, _ = export_onnx_bytes(model, shape, exporter=exporter, dynamic=False)
        how = f'static export ({type(e).__name__})'
    return ort_session(data, threads), how, len(data)


def ort_latency_benchmark(models: Dict[str, nn.Module],
                          sizes: Sequence[Tuple[int, int]],
                          repeat: int = 3,
                          warmup: int = 1,
                          threads: int = 2,
                          labels: Optional[Dict[str, str]] = None,
                          stock: Optional[Dict[str, str]] = None,
                          log=print,
                          exporters: Optional[Sequence[str]] = None) -> OrtBenchmarkResult:
    """ONNX Runtime vs PyTorch latency of ``models`` (eval mode, exported as they are:
    pass folded SLAB backbones to measure the folded form) at every size, batch 1, for
    every one of ``exporters`` (default: the default exporter only).

    Each model is exported once per exporter (dynamic batch / height / width) at the first
    size; a model whose dynamic export the exporter refuses is exported for each size
    (marked). Per size: one untimed forward of every (model, runtime) pair also gives
    ORT's relative error against PyTorch (a graph that is wrong at this size -- a frozen
    shape -- is re-exported at this size and marked), ``warmup - 1`` more untimed rounds,
    then ``repeat`` rounds timing one forward of every pair (PyTorch once per model, ORT
    once per model and exporter), the order rotating per round. Same thread count for
    both (``torch.set_num_threads`` / ORT intra-op threads)."""
    ort = require_onnxruntime()
    exporters = [resolve_exporter(e, 'ort_latency_benchmark')
                 for e in (exporters or [default_exporter()])]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        h0, w0 = sizes[0]
        keys = [(n, e) for n in models for e in exporters]
        sessions, graphs = {}, {}
        for name, exp in keys:
            models[name].eval()
            sessions[name, exp], graphs[name, exp], size = _export(
                models[name], (1, 3, h0, w0), exp, threads)
            log(f'exported {name} with {exp} ({size / 2 ** 20:.1f} MiB, {graphs[name, exp]})')
        timings: List[OrtTiming] = []
        pairs = [(n, 'torch') for n in models] + [(k, 'ort') for k in keys]
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            cur = {k: OrtTiming(k[0], (h, w), k[1]) for k in keys}
            torch_times: Dict[str, List[float]] = {n: [] for n in models}
            with torch.no_grad():
                for key in keys:
                    model, row, shape = models[key[0]], cur[key], (1, 3, h, w)
                    static = graphs[key].startswith('static')
                    if static:  # the dynamic export was refused: one export per size
                        sessions[key], row.graph, _ = _export(model, shape, key[1], threads,
                                                              dynamic=False)
                        row.graph = graphs[key]
                    check = compare_with_torch(sessions[key], model, [shape])[0]
                    if check.max_rel_error > 1e-3 and not static:
                        sessions[key], row.graph, _ = _export(model, shape, key[1], threads,
                                                              dynamic=False)
                        check = compare_with_torch(sessions[key], model, [shape])[0]
                    if check.error or not check.shapes_match:
                        row.graph = 'FAILED in ORT: ' + _short(check.error or 'wrong shapes')
                    row.rel_error = check.max_rel_error
                feeds = {k: {s.get_inputs()[0].name: x.numpy()} for k, s in sessions.items()}
                calls = {(n, 'torch'): (lambda n=n: models[n](x)) for n in models}
                calls.update({(k, 'ort'): (lambda k=k: sessions[k].run(None, feeds[k]))
                              for k in keys})

                def failed(pair) -> bool:
                    return pair[1] == 'ort' and cur[pair[0]].graph.startswith('FAILED')

                def timed(pair) -> None:
                    if not failed(pair):
                        key, rt = pair
                        (torch_times[key] if rt == 'torch'
                         else cur[key].ort_times).append(time_calls(calls[pair]))

                # (the checks above were the first untimed call of every ORT pair)
                warm_up(pairs, max(warmup - 1, 0),
                        lambda _, pair: None if failed(pair) else calls[pair]())
                interleaved_rounds(pairs, repeat, timed)
            for t in cur.values():
                t.torch_times = list(torch_times[t.model])
                log(f'{t.model:>20} {t.exporter:>11} {h}x{w}: PyTorch {t.torch_median:.3f} s, '
                    f'ORT {t.ort_median:.3f} s, rel. error {t.rel_error:.1e} ({t.graph})')
                timings.append(t)
    finally:
        torch.set_num_threads(prev)
    env = dict(torch=torch.__version__, onnxruntime=ort.__version__,
               python=platform.python_version(), cpu=cpu_name())
    return OrtBenchmarkResult(timings, threads, repeat, warmup, (h0, w0), env,
                              dict(labels or {}), dict(stock or {}), list(exporters))
