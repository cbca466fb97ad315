"""Side-by-side CPU benchmark of the SLAB backbones and mmdet's stock PVT / Swin.

One process, one run: every model is built once, and for each input size the forwards of
all models are interleaved round by round (after warm-up), so that drifting machine load
hits every model alike. Reported per model and size:

* latency: wall time of one ``torch.no_grad()`` eval forward at batch 1 (median, min, max
  over the rounds), with the intra-op thread count fixed by ``torch.set_num_threads``;
* MACs: multiply-accumulates of the matmul-type ops (linear, matmul/bmm/baddbmm, einsum,
  convolutions, scaled-dot-product attention) counted by mmengine's ``FlopAnalyzer`` on a
  traced forward. Element-wise ops (norms, activations, softmax, adds) are not counted, for
  every model alike. SLA is all matmuls + one depthwise conv, so its cost is in the count;
  ``scaled_dot_product_attention``, ``baddbmm`` and the in-place ``addmm_``, which the
  analyzer does not know, get handles here;
* achieved GFLOP/s = 2 * MACs / median latency, next to the dense fp32 GEMM rate
  (``torch.mm`` of two 2048x2048 matrices) measured in the same run;
* peak memory: the peak of the bytes of tensors alive at once among those the forward
  allocates through PyTorch's CPU allocator (from the ``[memory]`` events of
  ``torch.profiler.profile(profile_memory=True)``, a separate untimed forward): activations
  and temporaries, not weights or the input, not library-internal scratch; and, as an OS
  cross-check, the growth of the process's peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the timed forwards, which does see scratch memory but also
  allocator reuse.
"""
import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

Size = Tuple[int, int]
ModelFactory = Callable[[], nn.Module]

MODELS: Dict[str, str] = {
    'slab_pvt_t': 'SLAB-PVT-T',
    'slab_pvt_t_deploy': 'SLAB-PVT-T deploy',
    'pvt_t': 'PVT-T (mmdet)',
    'slab_swin_t': 'SLAB-Swin-T',
    'slab_swin_t_deploy': 'SLAB-Swin-T deploy',
    'swin_t': 'Swin-T (mmdet)',
}
STOCK = {'slab_pvt_t': 'pvt_t', 'slab_swin_t': 'swin_t'}  # SLAB model -> its stock twin
DEFAULT_SIZES: Tuple[Size, ...] = ((512, 512), (800, 1344), (1600, 2688))


def build_backbone(name: str, mini: bool = False) -> nn.Module:
    """One of :data:`MODELS` in eval mode (``*_deploy``: norms folded). ``mini``: the same
    architecture with small widths and depths (for smoke tests)."""
    base, deploy = name.removesuffix('_deploy'), name.endswith('_deploy')
    if base == 'slab_pvt_t':
        from mmslab.models import SLABPVT
        model = SLABPVT(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1]) if mini \
            else SLABPVT('tiny')
    elif base == 'slab_swin_t':
        from mmslab.models import SLABSwin
        model = SLABSwin(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]) if mini \
            else SLABSwin('tiny')
    elif base == 'pvt_t' and not deploy:
        from mmdet.models.backbones import PyramidVisionTransformer
        model = PyramidVisionTransformer(embed_dims=16 if mini else 64,
                                         num_layers=[1, 1, 1, 1] if mini else [2, 2, 2, 2])
    elif base == 'swin_t' and not deploy:
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(embed_dims=16 if mini else 96, depths=[2, 2, 2, 2] if mini
                                else [2, 2, 6, 2], num_heads=[1, 2, 4, 8] if mini
                                else [3, 6, 12, 24], window_size=7)
    else:
        raise KeyError(f'unknown model {name!r}; choose from {list(MODELS)}')
    model.init_weights()
    model.eval()
    if deploy:
        model.switch_to_deploy()
    return model


# ---------------------------------------------------------------------------- measurements
def gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Dense fp32 GEMM rate of this process (median of ``repeat`` ``n^3`` matmuls)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])  # q k^T and (attn) v


def _accumulating_mm_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(c, a, b)`` / ``addmm_(c, a, b)``: c + a @ b."""
    from mmengine.analysis.jit_handles import get_shape
    a, b = get_shape(inputs[1]), get_shape(inputs[2])
    return prod(a) * b[-1]


def _zero(inputs: List[Any], outputs: List[Any]) -> int:
    return 0


NOT_COUNTED = ('aten::batch_norm', 'aten::group_norm', 'aten::layer_norm',
               'aten::instance_norm', 'aten::upsample_nearest2d', 'aten::upsample_bilinear2d',
               'aten::adaptive_avg_pool2d', 'aten::grid_sampler')


def count_macs(model: nn.Module, x: torch.Tensor) -> Tuple[int, Dict[str, int]]:
    """MACs of the matmul-type ops of ``model(x)`` and the op names the analyzer saw but
    did not count that look like matmuls (should be empty)."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(model, (x,))
    # (a None handle does not drop an op that has a default handle in mmengine 0.10.7)
    analyzer.set_op_handle(**{'aten::scaled_dot_product_attention': _sdpa_macs,
                              'aten::baddbmm': _accumulating_mm_macs,
                              'aten::addmm_': _accumulating_mm_macs},
                           **{op: _zero for op in NOT_COUNTED})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    total = analyzer.total()
    missed = {op: n for op, n in analyzer.unsupported_ops().items()
              if any(k in op for k in ('mm', 'matmul', 'einsum', 'conv', 'attention', 'linear'))}
    return total, missed


def peak_alloc_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes alive at once among the tensors ``model(x)`` allocates (CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        model(x)
    events = sorted((e.start_ns(), e.nbytes()) for e in p.profiler.kineto_results.events()
                    if e.name() == '[memory]' and str(e.device_type()).endswith('CPU'))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _status_kb(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------- result
@dataclass
class Measurement:
    model: str
    size: Size
    times: List[float] = field(default_factory=list)
    macs: Optional[int] = None
    peak_bytes: Optional[int] = None
    rss_bytes: Optional[int] = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def gflops(self) -> Optional[float]:
        return None if self.macs is None else 2 * self.macs / self.median / 1e9


@dataclass
class BenchmarkResult:
    measurements: List[Measurement]
    gemm_gflops: List[float]
    threads: int
    repeat: int
    warmup: int
    env: Dict[str, str]
    missed_ops: Dict[str, Dict[str, int]] = field(default_factory=dict)
    load: Tuple[float, ...] = ()

    def get(self, model: str, size: Size) -> Optional[Measurement]:
        return next((m for m in self.measurements
                     if m.model == model and tuple(m.size) == tuple(size)), None)

    @property
    def gemm(self) -> float:
        """The highest GEMM rate measured in the run (start, and after each size)."""
        return max(self.gemm_gflops)

    def table(self) -> str:
        mb = lambda b: '-' if b is None else f'{b / 2 ** 20:.0f}'  # noqa: E731
        lines = [
            f'threads={self.threads}, batch 1, fp32, torch.no_grad eval; latency median of '
            f'{self.repeat} interleaved rounds after {self.warmup} warm-up; dense fp32 GEMM '
            f'(2048^3 torch.mm) {" / ".join(f"{g:.0f}" for g in self.gemm_gflops)} GFLOP/s '
            f'(start / after each size); {self.env.get("cpu", "")}; torch {self.env["torch"]}; '
            f'1-min load average at start / after each size: '
            f'{" / ".join(f"{x:.2f}" for x in self.load)}',
            '',
            '| backbone | input (HxW) | MPix | latency s: median [min, max] | vs stock '
            '| GMAC | GFLOP/s | % of GEMM | peak alloc MB | peak RSS growth MB |',
            '|---|---|---|---|---|---|---|---|---|---|',
        ]
        for m in self.measurements:
            h, w = m.size
            stock = self.get(STOCK.get(m.model.removesuffix('_deploy'), ''), m.size)
            vs = f'{m.median / stock.median:.2f}x' if stock else ''
            gf = m.gflops
            lines.append(
                f'| {MODELS.get(m.model, m.model)} | {h}x{w} | {h * w / 1e6:.2f} '
                f'| {m.median:.3f} [{min(m.times):.3f}, {max(m.times):.3f}] | {vs} '
                f'| {"-" if m.macs is None else f"{m.macs / 1e9:.3g}"} '
                f'| {"-" if gf is None else f"{gf:.1f}"} '
                f'| {"-" if gf is None else f"{100 * gf / self.gemm:.0f}%"} '
                f'| {mb(m.peak_bytes)} | {mb(m.rss_bytes)} |')
        if max(self.gemm_gflops) > 1.15 * min(self.gemm_gflops):
            lines.insert(1, '\nWARNING: the GEMM rate moved by more than 15% during the run: '
                            'the machine was not quiet, latencies are not reliable.')
        lines += ['', 'vs stock = latency / latency of the mmdet backbone of the same family; '
                  'GMAC = 1e9 multiply-accumulates of linear/matmul/conv/attention ops '
                  '(mmengine FlopAnalyzer, element-wise ops not counted); GFLOP/s = 2 x MAC / '
                  'median latency; % of GEMM against the higher GEMM rate; peak alloc = peak '
                  'of live bytes the forward allocated through the torch CPU allocator '
                  '(profiler memory events; activations + temporaries, no weights, no '
                  'library scratch); peak RSS growth = VmHWM after - VmRSS before the '
                  'timed forwards (max over rounds; OS view, includes scratch, blurred by '
                  'allocator reuse).']
        for model, ops in self.missed_ops.items():
            if ops:
                lines.append(f'WARNING: matmul-type ops not counted for {model}: {ops}')
        return '\n'.join(lines)

    def targets(self, size: Size = (800, 1344), big: Size = (1600, 2688)) -> List[str]:
        """The issue's targets as measured ratios (those whose models/sizes were run)."""
        out: List[str] = []
        hw = f'{size[0]}x{size[1]}'

        def ratio(num: Tuple[str, Size], den: Tuple[str, Size],
                  stat: Callable[[Measurement], float]) -> Optional[float]:
            a, b = self.get(*num), self.get(*den)
            return stat(a) / stat(b) if a and b else None

        def add(text: str, num: Tuple[str, Size], den: Tuple[str, Size],
                ok: Callable[[float], bool], speedup: bool = False) -> None:
            """Judged on medians (the issue's statistic); the ratio of the minima (the
            least disturbed rounds) is shown next to it."""
            by_med, by_min = ratio(num, den, lambda m: m.median), ratio(num, den, lambda m: min(m.times))
            if by_med is None:
                return
            if speedup:
                by_med, by_min = 1 - by_med, 1 - by_min
            out.append(f'- {text}: {by_med:.3f} (minima: {by_min:.3f}) -> '
                       f'{"met" if ok(by_med) else "NOT met"}')

        add(f'PVT-T (mmdet) / SLAB-PVT-T latency at {hw} (target >= 2)',
            ('pvt_t', size), ('slab_pvt_t', size), lambda v: v >= 2)
        add(f'SLAB-PVT-T time({big[0]}x{big[1]}) / time({hw}) (target <= 4.4)',
            ('slab_pvt_t', big), ('slab_pvt_t', size), lambda v: v <= 4.4)
        add(f'SLAB-Swin-T deploy / Swin-T (mmdet) latency at {hw} (target <= 0.85)',
            ('slab_swin_t_deploy', size), ('swin_t', size), lambda v: v <= 0.85)
        for fam in ('slab_swin_t', 'slab_pvt_t'):
            add(f'{MODELS[fam]} fold speed-up 1 - deploy/eval at {hw} (target >= 0.08)',
                (fam + '_deploy', size), (fam, size), lambda v: v >= 0.08, speedup=True)
        for m in self.measurements:
            if m.model.startswith('slab') and tuple(m.size) == tuple(size) and m.gflops:
                v = m.gflops / self.gemm
                out.append(f'- {MODELS[m.model]} GFLOP/s / GEMM GFLOP/s at {hw} (target >= '
                           f'0.40): {v:.2f} -> {"met" if v >= 0.4 else "NOT met"}')
        return out

    def plot(self, path: str) -> None:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colours = dict(slab_pvt_t='tab:blue', pvt_t='tab:cyan', slab_swin_t='tab:red',
                       swin_t='tab:orange')
        for model in dict.fromkeys(m.model for m in self.measurements):
            ms = sorted((m for m in self.measurements if m.model == model),
                        key=lambda m: m.size[0] * m.size[1])
            ax.plot([m.size[0] * m.size[1] / 1e6 for m in ms], [m.median for m in ms],
                    marker='o', linestyle='--' if model.endswith('_deploy') else '-',
                    color=colours.get(model.removesuffix('_deploy')),
                    label=MODELS.get(model, model))
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('input megapixels')
        ax.set_ylabel('forward latency, s (median)')
        ax.set_title(f'CPU, {self.threads} threads, batch 1')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


# ------------------------------------------------------------------------------------- run
def run_benchmark(models: Sequence[str] = tuple(MODELS),
                  sizes: Sequence[Size] = DEFAULT_SIZES,
                  repeat: int = 3,
                  warmup: int = 1,
                  threads: int = 2,
                  mini: bool = False,
                  flops: bool = True,
                  memory: bool = True,
                  factories: Optional[Mapping[str, ModelFactory]] = None,
                  log: Callable[[str], None] = print) -> BenchmarkResult:
    """Measure ``models`` (names of :data:`MODELS`, or keys of ``factories``) at ``sizes``.

    Per size: ``warmup`` untimed forwards of every model, then ``repeat`` rounds, each
    timing one forward of every model (the order rotates per round); then, untimed, one
    traced forward for the MACs and one profiled forward for the peak allocation.
    """
    if repeat < 1:
        raise ValueError('repeat must be >= 1')
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(models, sizes, repeat, warmup, mini, flops, memory, factories, log)
    finally:
        torch.set_num_threads(prev_threads)


def _run(models: Sequence[str], sizes: Sequence[Size], repeat: int, warmup: int, mini: bool,
         flops: bool, memory: bool, factories: Optional[Mapping[str, ModelFactory]],
         log: Callable[[str], None]) -> BenchmarkResult:
    load = [os.getloadavg()[0]]
    built = {name: factories[name]() if factories and name in factories
             else build_backbone(name, mini) for name in models}
    for model in built.values():
        model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
    log(f'threads: {torch.get_num_threads()}; models: {", ".join(built)}')
    gemm = [gemm_gflops()]
    log(f'GEMM fp32 2048^3: {gemm[0]:.1f} GFLOP/s')
    rss_ok = _reset_peak_rss() and _status_kb('VmHWM') is not None
    result: List[Measurement] = []
    missed: Dict[str, Dict[str, int]] = {}
    names = list(built)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w)
        meas = {name: Measurement(name, (h, w)) for name in names}
        with torch.no_grad():
            for _ in range(warmup):
                for name in names:
                    built[name](x)
            for r in range(repeat):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    rss0 = _status_kb('VmRSS') if rss_ok and _reset_peak_rss() else None
                    t0 = time.perf_counter()
                    built[name](x)
                    meas[name].times.append(time.perf_counter() - t0)
                    if rss0 is not None:
                        grow = (_status_kb('VmHWM') - rss0) * 1024
                        meas[name].rss_bytes = max(meas[name].rss_bytes or 0, grow)
        gemm.append(gemm_gflops())
        load.append(os.getloadavg()[0])
        log(f'GEMM fp32 2048^3 after {h}x{w}: {gemm[-1]:.1f} GFLOP/s, load {load[-1]:.2f}')
        for name in names:
            m = meas[name]
            if flops:
                with torch.no_grad():
                    m.macs, missed[name] = count_macs(built[name], x)
            if memory:
                m.peak_bytes = peak_alloc_bytes(built[name], x)
            log(f'{name:>20} {h}x{w}: {m.median:.3f} s [{min(m.times):.3f}, '
                f'{max(m.times):.3f}]' + (f', {m.macs / 1e9:.3g} GMAC' if m.macs else ''))
            result.append(m)
    env = dict(torch=torch.__version__, python=platform.python_version(),
               cpu=_cpu_name(), cores=str(os.cpu_count()))
    return BenchmarkResult(result, gemm, torch.get_num_threads(), repeat, warmup, env,
                           missed, tuple(load))


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_size(text: str) -> Size:
    h, _, w = text.lower().partition('x')
    return int(h), int(w or h)


def main(argv: Optional[Sequence[str]] = None) -> BenchmarkResult:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=list(DEFAULT_SIZES),
                        help='input sizes HxW (default: 512x512 800x1344 1600x2688)')
    parser.add_argument('--repeat', type=int, default=3, help='timed rounds (median of them)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--out-dir', default='work_dirs/benchmark')
    parser.add_argument('--plot', default='latency.png', help='PNG name inside --out-dir')
    parser.add_argument('--mini', action='store_true', help='small widths (smoke test)')
    parser.add_argument('--no-flops', action='store_true', help='skip the MAC count')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory profile')
    args = parser.parse_args(argv)
    import mmslab  # noqa: F401  (registers the SLAB modules)
    res = run_benchmark(args.models, args.sizes, args.repeat, args.warmup, args.threads,
                        args.mini, not args.no_flops, not args.no_memory)
    os.makedirs(args.out_dir, exist_ok=True)
    report = res.table() + '\n\nTargets:\n' + '\n'.join(res.targets()) + '\n'
    print('\n' + report)
    with open(os.path.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(report)
    with open(os.path.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(asdict(res), f, indent=1)
    plot = os.path.join(args.out_dir, args.plot)
    res.plot(plot)
    print(f'wrote {args.out_dir}/benchmark.md, benchmark.json and {plot}')
    return res
