"""One benchmark run: every model built once; per case, warm-up, timed rounds
interleaved across the models (the order rotates per round), then untimed, one call for
the peak memory and (once per model and size) one traced forward for the MACs."""
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmslab.timing import (calls_per_round, interleaved_rounds, spread, sync, time_calls,
                           warm_up)
from mmslab.validation import check_bool, check_choice, check_int

from . import allocator
from .cases import AMP_DTYPES, DEFAULT_SIZES, Case, Size, make_cases, make_step
from .machine import environment, gemm_gflops, gemm_size
from .macs import count_macs
from .memory import PeakRSS, model_bytes, peak_alloc
from .models import (COMPILED, DEFAULT_MODELS, add_compiled_twins, base_name, build_backbone,
                     graph_breaks, label, set_mode)
from .result import BenchmarkResult, Measurement

ModelFactory = Callable[[], nn.Module]
Log = Callable[[str], None]


@dataclass
class Options:
    """What a run measures and how."""
    models: Sequence[str] = DEFAULT_MODELS  # names of MODELS, or keys of the factories
    cases: Sequence[Case] = field(default_factory=lambda: make_cases(DEFAULT_SIZES))
    repeat: int = 3                          # timed rounds (median of them)
    warmup: int = 1                          # untimed rounds first
    threads: int = 2                         # torch.set_num_threads for the run
    mini: bool = False                       # small widths and depths (smoke tests)
    flops: bool = True                       # count the MACs
    memory: bool = True                      # measure the peak memory
    device: str = 'cpu'
    compile: bool = False                    # also time a torch.compile'd twin
    compile_backend: str = 'inductor'
    compile_mode: Optional[str] = None
    tf32: Optional[bool] = None              # CUDA: set both allow_tf32 flags
    allocator: str = 'default'               # 'retain': glibc keeps freed memory (.allocator)

    def __post_init__(self) -> None:
        check_int('benchmark', 'repeat', self.repeat, min=1)
        check_int('benchmark', 'warmup', self.warmup, min=0)
        check_int('benchmark', 'threads', self.threads, min=1)
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ('cpu', 'cuda'):
            raise ValueError(f"benchmark: device must be 'cpu' or 'cuda' (or 'cuda:N'), "
                             f'got {self.device!r}')
        for name in ('mini', 'flops', 'memory', 'compile'):
            check_bool('benchmark', name, getattr(self, name))
        if not self.models:
            raise ValueError('benchmark: models must name at least one model')
        self.cases = list(self.cases)
        if not self.cases:
            raise ValueError('benchmark: cases must hold at least one case')
        for c in self.cases:
            check_choice('benchmark', 'amp', c.amp, list(AMP_DTYPES))
        check_choice('benchmark', 'allocator', self.allocator, list(allocator.MODES))


def run_benchmark(options: Options, factories: Optional[Mapping[str, ModelFactory]] = None,
                  log: Log = print,
                  on_case: Optional[Callable[[BenchmarkResult], None]] = None
                  ) -> BenchmarkResult:
    """Measure ``options.models`` (built by :func:`~bench.models.build_backbone`, or by
    ``factories[name]()``) in every case of ``options.cases``. ``on_case`` gets the result
    so far after every case (a run cut short keeps what it measured).
    ``options.allocator == 'retain'`` sets glibc's malloc options for the rest of the
    process (:func:`~bench.allocator.retain_freed_memory`)."""
    dev = torch.device(options.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda: CUDA is not available in this process')
    if options.allocator == 'retain':
        allocator.retain_freed_memory()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    prev_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if options.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = options.tf32
        torch.backends.cudnn.allow_tf32 = options.tf32
    try:
        state = _Run(options, dev, log)
        state.build(factories or {})
        for case in options.cases:
            state.measure(case)
            if on_case is not None:
                on_case(state.result())
        return state.result()
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32


class _Run:
    """The state of one run: the models, and what was measured so far."""

    def __init__(self, options: Options, dev: torch.device, log: Log) -> None:
        self.opts, self.dev, self.log = options, dev, log
        self.cuda = dev.type == 'cuda'
        self.load = [os.getloadavg()[0]]
        self.built: Dict[str, nn.Module] = {}
        self.gemm: List[float] = []
        self.gemm_amp: Dict[str, float] = {}
        self.rss: Optional[PeakRSS] = None
        self.measurements: List[Measurement] = []
        self.missed: Dict[str, Dict[str, int]] = {}
        self.failures: Dict[str, str] = {}
        self.macs_cache: Dict[Tuple[str, Size], Tuple[Optional[int], Dict[str, int]]] = {}
        self.t_start = 0.0

    def build(self, factories: Mapping[str, ModelFactory]) -> None:
        """Build the models (and their compiled twins), then measure the GEMM rates."""
        o = self.opts
        for name in o.models:
            model = factories[name]() if name in factories else build_backbone(name, o.mini)
            model.to(self.dev)
            model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
            self.built[name] = model
        if o.compile:
            add_compiled_twins(self.built, o.compile_backend, o.compile_mode, self.dev,
                               self.log)
        self.log(f'device: {self.dev}; threads: {torch.get_num_threads()}; models: '
                 f'{", ".join(self.built)}')
        n = gemm_size(self.dev, mini=o.mini)
        self.gemm.append(gemm_gflops(n, device=self.dev))
        for amp in dict.fromkeys(c.amp for c in o.cases):
            if AMP_DTYPES[amp] is not None:
                self.gemm_amp[amp] = gemm_gflops(gemm_size(self.dev, True, o.mini),
                                                 device=self.dev, dtype=AMP_DTYPES[amp])
        self.log(f'GEMM fp32 {n}^3: {self.gemm[0]:.1f} GFLOP/s' +
                 ''.join(f', {k}: {v:.1f}' for k, v in self.gemm_amp.items()))
        if not self.cuda:
            self.rss = PeakRSS()
        self.t_start = time.perf_counter()

    def result(self) -> BenchmarkResult:
        env = dict(environment(self.dev, self.opts.mini), allocator=allocator.describe())
        return BenchmarkResult(list(self.measurements), list(self.gemm),
                               torch.get_num_threads(), self.opts.repeat, self.opts.warmup,
                               env, dict(self.missed),
                               tuple(self.load),
                               str(self.dev), dict(self.gemm_amp), dict(self.failures))

    # ------------------------------------------------------------------------- a case
    def measure(self, case: Case) -> None:
        (h, w), batch = case.size, case.batch
        # the folded forms are inference-only
        names = [n for n in self.built
                 if not (case.train and base_name(n).endswith('_deploy'))]
        x = torch.randn(batch, 3, h, w, device=self.dev)
        for name in names:
            set_mode(self.built[name], case.train)
        steps = {name: make_step(self.built[name], x, case) for name in names}
        meas = {name: Measurement(name, (h, w), batch=batch, amp=case.amp, train=case.train,
                                  weight_bytes=model_bytes(self.built[name]))
                for name in names}
        self.log(f'-- {case}: {len(names)} models '
                 f'({time.perf_counter() - self.t_start:.0f} s into the run)')

        def fail(name: str, what: str, e: BaseException) -> None:
            """A model that fails in a case (an error, CUDA out of memory) is dropped from
            the case and reported; the run goes on."""
            self.failures[f'{label(name)} {case}'] = \
                f'{what}: {type(e).__name__}: {str(e)[:300]}'
            self.log(f'{name:>28} {case}: FAILED ({what}): {type(e).__name__}: '
                     f'{str(e)[:300]}')
            names.remove(name)
            if self.cuda:
                torch.cuda.empty_cache()

        self._warm_up(case, names, steps, meas, fail)
        self._timed_rounds(names, steps, meas, fail)
        n = gemm_size(self.dev, mini=self.opts.mini)
        self.gemm.append(gemm_gflops(n, device=self.dev))
        self.load.append(os.getloadavg()[0])
        self.log(f'GEMM fp32 {n}^3 after {case}: {self.gemm[-1]:.1f} '
                 f'GFLOP/s, load {self.load[-1]:.2f}')
        for name in list(names):
            self._untimed(case, name, steps[name], meas[name], x)
            self.measurements.append(meas[name])
        for name in steps:
            set_mode(self.built[name], False)
            if case.train:
                self.built[name].zero_grad(set_to_none=True)
        del steps, x
        if self.cuda:
            torch.cuda.empty_cache()

    def _warm_up(self, case: Case, names: List[str], steps, meas, fail) -> None:
        """``warmup`` untimed rounds (the first call of a compiled model compiles: timed
        on its own); sets the calls per timed round (CUDA: rounds of ~50 ms)."""
        last: Dict[str, float] = {}

        def call(i: int, name: str) -> None:
            try:
                if i == 0 and name.endswith(COMPILED):
                    breaks = graph_breaks()
                    sync(self.dev)
                    t0 = time.perf_counter()
                    steps[name]()
                    sync(self.dev)
                    meas[name].first_call = time.perf_counter() - t0
                    meas[name].graph_breaks = graph_breaks() - breaks
                    self.log(f'{name:>28} {case}: first call (compiles) '
                             f'{meas[name].first_call:.1f} s, {meas[name].graph_breaks} '
                             'graph breaks')
                elif i < self.opts.warmup:
                    last[name] = time_calls(steps[name], 1, self.dev)
            except Exception as e:  # noqa: BLE001 (reported, the run goes on)
                fail(name, 'warm-up', e)

        warm_up(names, max(self.opts.warmup, 1 if self.opts.compile else 0), call)
        for name in names:  # CUDA: rounds of ~50 ms; CPU: one call
            t = last.get(name)
            meas[name].inner = calls_per_round(t) if self.cuda and t else 1

    def _timed_rounds(self, names: List[str], steps, meas, fail) -> None:
        def timed(name: str) -> None:
            m = meas[name]
            rss0 = self.rss.start() if self.rss is not None else None
            faults0 = None if self.cuda else allocator.minor_faults()
            try:
                m.times.append(time_calls(steps[name], m.inner, self.dev))
            except Exception as e:  # noqa: BLE001
                fail(name, 'timed round', e)
                return
            if faults0 is not None:
                m.faults.append((allocator.minor_faults() - faults0) // m.inner)
            if rss0 is not None:
                m.rss_bytes = max(m.rss_bytes or 0, PeakRSS.growth(rss0))

        interleaved_rounds(names, self.opts.repeat, timed)

    def _untimed(self, case: Case, name: str, step, m: Measurement, x: torch.Tensor) -> None:
        """The peak memory of one more call, and the MACs (once per model and size)."""
        model = self.built[name]
        if self.opts.memory:
            try:
                if case.train:
                    model.zero_grad(set_to_none=True)
                m.peak_bytes = peak_alloc(step, self.dev)
            except Exception as e:  # noqa: BLE001
                self.log(f'{name:>28} {case}: memory measurement failed: {e!r:.300}')
        if case.train:
            model.zero_grad(set_to_none=True)
        base = base_name(name)
        if self.opts.flops and base in self.built:
            key = (base, case.size)
            if key not in self.macs_cache:
                set_mode(self.built[base], False)
                try:
                    with torch.no_grad():
                        self.macs_cache[key] = count_macs(self.built[base], x[:1])
                except Exception as e:  # noqa: BLE001
                    self.log(f'{base:>28} {case.size[0]}x{case.size[1]}: MAC count failed: '
                             f'{e!r:.300}')
                    self.macs_cache[key] = (None, {})
                set_mode(self.built[base], case.train)
            if self.macs_cache[key][0] is not None:
                m.macs = self.macs_cache[key][0] * case.batch
            self.missed[base] = self.macs_cache[key][1]
        unit, scale = ('ms', 1e3) if self.cuda else ('s', 1.0)
        self.log(f'{name:>28} {case}: {spread(m.times, scale)} {unit}'
                 + (f' x{m.inner}' if m.inner > 1 else '')
                 + (f', {m.macs / 1e9:.3g} GMAC' if m.macs else '')
                 + (f', peak {m.peak_bytes / 2 ** 20:.0f} MB' if m.peak_bytes is not None
                    else ''))
