"""Side-by-side benchmark of the SLAB backbones and mmdet's stock PVT / Swin, on CPU or CUDA.

One process, one run: every model is built once, and for each *case* (input size, batch,
autocast dtype, eval forward or training step) the calls of all models are interleaved
round by round (after warm-up), so that drifting machine load hits every model alike.
Reported per model and case:

* latency (median, min, max over the rounds):

  - eval: one ``torch.no_grad()`` eval forward;
  - train (``--train``): one training step of the backbone alone -- ``zero_grad``, forward
    in train mode, loss = the sum of the means of the output maps, backward -- under
    autocast when ``--amp`` is given, with a ``torch.amp.GradScaler`` for float16. The
    SLAB models train with ``norm_eval=False`` and ``lam = 0.5`` (LayerNorm and RepBN both
    run, RepBN on batch statistics: the middle of the PRepBN schedule); the ``*_deploy``
    forms are inference-only and are not trained;
  - ``--amp fp16|bf16``: the call runs under ``torch.autocast(device, dtype)`` (weights and
    input stay float32, as in mixed-precision training and ``fp16=True`` test loops);
  - CPU: wall time of one call (``time.perf_counter``), intra-op threads fixed by
    ``torch.set_num_threads``;
  - CUDA: CUDA events around ``inner`` back-to-back calls (``inner`` chosen from the
    warm-up so that a round lasts ~50 ms; the time per call is reported), after
    ``warmup`` untimed calls of every model;

* MACs: multiply-accumulates of the matmul-type ops (linear, matmul/bmm/baddbmm, einsum,
  convolutions, scaled-dot-product attention) of the *forward*, counted by mmengine's
  ``FlopAnalyzer`` on a traced float32 eval forward of one image (times the batch).
  Element-wise ops (norms, activations, softmax, adds) are not counted, for every model
  alike. SLA is all matmuls + one depthwise conv, so its cost is in the count;
  ``scaled_dot_product_attention``, ``baddbmm`` and the in-place ``addmm_``, which the
  analyzer does not know, get handles here;
* achieved GFLOP/s = 2 * MACs / median latency (eval cases), next to the dense GEMM rate
  (``torch.mm`` of two square matrices: 2048 on CPU, 4096 on CUDA) of the case's compute
  dtype measured in the same run (float32: at the start and after each case, with a
  warning when it moved by more than 15%, i.e. the machine was not quiet);
* peak memory:

  - CPU: the peak of the bytes of tensors alive at once among those the call allocates
    through PyTorch's CPU allocator (from the ``[memory]`` events of
    ``torch.profiler.profile(profile_memory=True)``, a separate untimed call): activations,
    temporaries and (train) gradients, not weights or the input, not library-internal
    scratch; and, as an OS cross-check, the growth of the process's peak RSS (``VmHWM``,
    reset through ``/proc/self/clear_refs``) over the timed calls;
  - CUDA: ``torch.cuda.max_memory_allocated()`` over a separate untimed call (after
    ``torch.cuda.reset_peak_memory_stats()``) minus what was allocated before it -- the
    same "what the call allocates" -- and that plus the model's own weights and buffers
    ("incl. weights"; all models stay resident on the GPU, so the absolute peak of the
    process would mix them);

* ``--compile``: every model is also wrapped in ``torch.compile`` (sharing the eager
  model's weights) and timed next to the eager one as "<model> [compiled]". The first
  call of each case compiles (a new shape, dtype or train/eval mode is a new graph); its
  time minus the median is reported as the compile time, and the number of graph breaks
  dynamo counted is logged.

TF32: on CUDA the header states ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32`` (PyTorch's defaults: off for matmuls, on for cuDNN
convolutions); ``--tf32 on|off`` sets both.
"""
import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
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
    'swin_prepbn_t': 'Swin-T-PRepBN',
    'swin_prepbn_t_deploy': 'Swin-T-PRepBN deploy',
}
# SLAB model -> its stock twin (Swin-T-PRepBN vs Swin-T: the paper's detection pair)
STOCK = {'slab_pvt_t': 'pvt_t', 'slab_swin_t': 'swin_t', 'swin_prepbn_t': 'swin_t'}
DEFAULT_SIZES: Tuple[Size, ...] = ((512, 512), (800, 1344), (1600, 2688))
AMP_DTYPES: Dict[str, Optional[torch.dtype]] = {
    'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
COMPILED = '+compile'  # name suffix of the torch.compile'd twin of a model
#: PRepBN lam of the SLAB models in training steps (both branches, mid-schedule)
TRAIN_LAM = 0.5


@dataclass(frozen=True)
class Case:
    """What one interleaved group of calls measures."""
    size: Size
    batch: int = 1
    amp: str = 'fp32'     # 'fp32' (no autocast) | 'fp16' | 'bf16' (torch.autocast dtype)
    train: bool = False   # training step (fwd + bwd) instead of a no_grad eval forward

    @property
    def mode(self) -> str:
        return f'{"train" if self.train else "eval"} {self.amp}'

    def __str__(self) -> str:
        return f'{self.mode} b{self.batch} {self.size[0]}x{self.size[1]}'


#: the GPU matrix of the issue: batch 1 and 2 at 800x1344, batch 16 at 512x512, batch 1
#: at 1600x2688; eval in fp32 and under fp16 autocast, training step under fp16 AMP
GPU_SHAPES: Tuple[Tuple[Size, int], ...] = (
    ((800, 1344), 1), ((800, 1344), 2), ((512, 512), 16), ((1600, 2688), 1))
PRESETS: Dict[str, Tuple[Case, ...]] = {
    'gpu': tuple(Case(size, batch, amp, train) for size, batch in GPU_SHAPES
                 for amp, train in (('fp32', False), ('fp16', False), ('fp16', True))),
}


def base_name(name: str) -> str:
    """The eager model's name of ``name`` (``x+compile`` -> ``x``)."""
    return name.removesuffix(COMPILED)


def label(name: str) -> str:
    base = base_name(name)
    return MODELS.get(base, base) + (' [compiled]' if name.endswith(COMPILED) else '')


def build_backbone(name: str, mini: bool = False,
                   device: Optional[torch.device] = None) -> nn.Module:
    """One of :data:`MODELS` in eval mode (``*_deploy``: norms folded), on ``device``.
    ``mini``: the same architecture with small widths and depths (for smoke tests)."""
    base, deploy = name.removesuffix('_deploy'), name.endswith('_deploy')
    if base == 'slab_pvt_t':
        from mmslab.models import SLABPVT
        model = SLABPVT(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1]) if mini \
            else SLABPVT('tiny')
    elif base in ('slab_swin_t', 'swin_prepbn_t'):
        from mmslab.models import SLABSwin
        kw = dict(attn_types='SSSS', window_sizes=7) if base == 'swin_prepbn_t' else {}
        model = SLABSwin(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], **kw) \
            if mini else SLABSwin('tiny', **kw)
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
        model.switch_to_deploy()  # (on the CPU, in float64, before the move)
    if device is not None:
        model.to(device)
    return model


def set_mode(model: nn.Module, train: bool) -> None:
    """Eval, or train as the benchmark trains: SLAB's RepBN BatchNorms on batch statistics
    (``norm_eval=False``) and ``lam = TRAIN_LAM``; eval runs the converged ``lam = 0``."""
    from mmslab.models import set_prepbn_lam
    for m in model.modules():
        if hasattr(m, 'norm_eval') and hasattr(m, 'frozen_modules'):  # SLAB backbones
            m.norm_eval = False
    set_prepbn_lam(model, TRAIN_LAM if train else 0.0)
    model.train(train)  # (mmdet's SwinTransformer.train returns None: no chaining)


def training_loss(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The benchmark's loss: the sum over the output maps of their mean (float32)."""
    return sum(o.float().mean() for o in outs)


def make_step(model: nn.Module, x: torch.Tensor, case: Case) -> Callable[[], Any]:
    """The call that ``case`` times: a no_grad eval forward, or a training step."""
    dtype = AMP_DTYPES[case.amp]
    dev = x.device.type

    def autocast():
        return torch.autocast(dev, dtype=dtype) if dtype is not None else nullcontext()

    if not case.train:
        def forward():
            with torch.no_grad(), autocast():
                return model(x)
        return forward

    scaler = torch.amp.GradScaler(dev) if case.amp == 'fp16' else None

    def train_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = training_loss(model(x))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss
    return train_step


# ---------------------------------------------------------------------------- measurements
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Seconds per call of ``n`` back-to-back calls: CUDA events on CUDA (after the calls
    queued before have finished), wall time elsewhere."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)  # nothing queued before: the calls' own time
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def gemm_gflops(n: int = 2048, repeat: int = 5, device: Any = 'cpu',
                dtype: torch.dtype = torch.float32) -> float:
    """Dense GEMM rate of this process (median of ``repeat`` ``n^3`` matmuls)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    times = [time_calls(lambda: torch.mm(a, b), 1, device) for _ in range(repeat)]
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


def cpu_peak_alloc(fn: Callable[[], Any]) -> int:
    """Peak bytes alive at once among the tensors ``fn()`` allocates (CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in p.profiler.kineto_results.events()
                    if e.name() == '[memory]' and str(e.device_type()).endswith('CPU'))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_alloc_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes alive at once among the tensors the eval forward ``model(x)`` allocates."""
    def forward():
        with torch.no_grad():
            model(x)
    return cpu_peak_alloc(forward)


def cuda_peak_alloc(fn: Callable[[], Any], device: torch.device) -> int:
    """``max_memory_allocated`` over ``fn()`` minus what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(model.parameters()) + list(model.buffers()))


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


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return sum(counters['graph_break'].values())


# ---------------------------------------------------------------------------------- result
@dataclass
class Measurement:
    model: str
    size: Size
    times: List[float] = field(default_factory=list)
    macs: Optional[int] = None               # of the forward, whole batch
    peak_bytes: Optional[int] = None         # what the call allocates
    rss_bytes: Optional[int] = None          # CPU: peak RSS growth
    batch: int = 1
    amp: str = 'fp32'
    train: bool = False
    inner: int = 1                           # calls per timed round (CUDA)
    weight_bytes: Optional[int] = None       # parameters + buffers of the model
    first_call: Optional[float] = None       # compiled models: the first (compiling) call
    graph_breaks: Optional[int] = None       # compiled models: dynamo's count, first call

    @property
    def case(self) -> Case:
        return Case(tuple(self.size), self.batch, self.amp, self.train)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def gflops(self) -> Optional[float]:
        """Achieved rate of the eval forward (None for training steps)."""
        if self.macs is None or self.train:
            return None
        return 2 * self.macs / self.median / 1e9

    @property
    def compile_s(self) -> Optional[float]:
        return None if self.first_call is None else self.first_call - self.median

    @property
    def peak_total_bytes(self) -> Optional[int]:
        if self.peak_bytes is None or self.weight_bytes is None:
            return None
        return self.peak_bytes + self.weight_bytes


@dataclass
class BenchmarkResult:
    measurements: List[Measurement]
    gemm_gflops: List[float]                 # float32, at the start and after each case
    threads: int
    repeat: int
    warmup: int
    env: Dict[str, str]
    missed_ops: Dict[str, Dict[str, int]] = field(default_factory=dict)
    load: Tuple[float, ...] = ()
    device: str = 'cpu'
    gemm_amp: Dict[str, float] = field(default_factory=dict)  # 'fp16' / 'bf16' GEMM rates
    failures: Dict[str, str] = field(default_factory=dict)    # '<model> <case>': error

    def get(self, model: str, size: Size, batch: int = 1, amp: str = 'fp32',
            train: bool = False) -> Optional[Measurement]:
        case = Case(tuple(size), batch, amp, train)
        return next((m for m in self.measurements if m.model == model and m.case == case),
                    None)

    def stock(self, m: Measurement) -> Optional[Measurement]:
        """The stock twin measured in ``m``'s case (compiled when ``m`` is and the
        compiled twin was run)."""
        twin = STOCK.get(base_name(m.model).removesuffix('_deploy'))
        if twin is None:
            return None
        c = m.case
        if m.model.endswith(COMPILED):
            compiled = self.get(twin + COMPILED, c.size, c.batch, c.amp, c.train)
            if compiled is not None:
                return compiled
        return self.get(twin, c.size, c.batch, c.amp, c.train)

    @property
    def gemm(self) -> float:
        """The highest float32 GEMM rate measured in the run (start, and after each case)."""
        return max(self.gemm_gflops)

    def gemm_rate(self, amp: str) -> Optional[float]:
        return self.gemm if amp == 'fp32' else self.gemm_amp.get(amp)

    @property
    def cuda(self) -> bool:
        return self.device.startswith('cuda')

    def header(self) -> str:
        gemm = (f'dense GEMM ({self.env.get("gemm_n", "2048")}^3 torch.mm) fp32 '
                f'{" / ".join(f"{g:.0f}" for g in self.gemm_gflops)} GFLOP/s (start / after '
                f'each case)' + ''.join(f', {k} ({self.env.get("gemm_amp_n", "")}^3) {v:.3g}'
                                        for k, v in self.gemm_amp.items()))
        load = ('1-min load average at start / after each case: '
                + ' / '.join(f'{x:.2f}' for x in self.load))
        if self.cuda:
            e = self.env
            return (f'{e.get("gpu", "CUDA")}; torch {e["torch"]}, CUDA {e.get("cuda")}, '
                    f'cuDNN {e.get("cudnn")}; TF32: torch.backends.cuda.matmul.allow_tf32='
                    f'{e.get("matmul_tf32")}, torch.backends.cudnn.allow_tf32='
                    f'{e.get("cudnn_tf32")}; cudnn.benchmark={e.get("cudnn_benchmark")}; '
                    f'latency: CUDA events, median of {self.repeat} '
                    f'interleaved rounds (each of `inner` back-to-back calls) after '
                    f'{self.warmup} warm-up calls; {gemm}; {load}')
        return (f'CPU, threads={self.threads}; latency: wall time, median of {self.repeat} '
                f'interleaved rounds after {self.warmup} warm-up; {gemm}; '
                f'{self.env.get("cpu", "")}; torch {self.env["torch"]}; {load}')

    def table(self) -> str:
        mb = lambda b: '-' if b is None else f'{b / 2 ** 20:.0f}'  # noqa: E731
        unit, scale = ('ms', 1e3) if self.cuda else ('s', 1.0)
        compiled = any(m.model.endswith(COMPILED) for m in self.measurements)
        last = 'peak incl. weights MB' if self.cuda else 'peak RSS growth MB'
        cols = ['backbone', 'input (HxW)', 'batch', 'mode', 'MPix',
                f'latency {unit}: median [min, max]', 'vs stock', 'GMAC', 'GFLOP/s',
                '% of GEMM', 'peak alloc MB', last]
        if compiled:
            cols += ['compile s', 'vs eager']
        lines = [self.header(), '', '| ' + ' | '.join(cols) + ' |',
                 '|' + '---|' * len(cols)]
        fmt = (lambda t: f'{t * scale:.2f}') if self.cuda else (lambda t: f'{t:.3f}')
        for m in self.measurements:
            h, w = m.size
            stock = self.stock(m)
            vs = f'{m.median / stock.median:.2f}x' if stock else ''
            gf = m.gflops
            rate = self.gemm_rate(m.amp)
            row = [label(m.model), f'{h}x{w}', str(m.batch), m.case.mode,
                   f'{m.batch * h * w / 1e6:.2f}',
                   f'{fmt(m.median)} [{fmt(min(m.times))}, {fmt(max(m.times))}]', vs,
                   '-' if m.macs is None else f'{m.macs / 1e9:.3g}',
                   '-' if gf is None else f'{gf:.1f}',
                   '-' if gf is None or not rate else f'{100 * gf / rate:.0f}%',
                   mb(m.peak_bytes), mb(m.peak_total_bytes if self.cuda else m.rss_bytes)]
            if compiled:
                eager = self.get(base_name(m.model), m.size, m.batch, m.amp, m.train) \
                    if m.model.endswith(COMPILED) else None
                row += ['-' if m.compile_s is None else f'{m.compile_s:.1f}',
                        f'{m.median / eager.median:.2f}x' if eager else '']
            lines.append('| ' + ' | '.join(row) + ' |')
        if max(self.gemm_gflops) > 1.15 * min(self.gemm_gflops):
            lines.insert(1, '\nWARNING: the GEMM rate moved by more than 15% during the run: '
                            'the machine was not quiet, latencies are not reliable.')
        mem = ('peak alloc = torch.cuda.max_memory_allocated over one call minus what was '
               'allocated before it (activations, temporaries, train: gradients); peak incl. '
               'weights = that + the model\'s parameters and buffers' if self.cuda else
               'peak alloc = peak of live bytes the call allocated through the torch CPU '
               'allocator (profiler memory events; activations + temporaries (+ gradients), '
               'no weights, no library scratch); peak RSS growth = VmHWM after - VmRSS '
               'before the timed calls (max over rounds; OS view, includes scratch, blurred '
               'by allocator reuse)')
        lines += ['', 'mode = eval (torch.no_grad forward) or train (zero_grad + forward + '
                  'backward of sum(mean(map))) and the autocast dtype (fp32: none); vs stock = '
                  'latency / latency of the mmdet backbone of the same family in the same '
                  'case (Swin-T-PRepBN: mmdet Swin-T); GMAC = 1e9 multiply-accumulates of '
                  'the forward\'s linear/matmul/conv/attention ops (mmengine FlopAnalyzer, '
                  'element-wise ops not counted); GFLOP/s = 2 x MAC / median latency (eval '
                  'only); % of GEMM against the GEMM rate of the same dtype; ' + mem + '.']
        if compiled:
            lines[-1] += (' compile s = first call - median (the first call of a case '
                          'compiles); vs eager = compiled / eager latency.')
        for model, ops in self.missed_ops.items():
            if ops:
                lines.append(f'WARNING: matmul-type ops not counted for {model}: {ops}')
        for what, error in self.failures.items():
            lines.append(f'FAILED: {what}: {error}')
        return '\n'.join(lines)

    # ----------------------------------------------------------------------- targets
    def _ratio(self, num: str, den: str, case: Case, stat: Callable[[Measurement], float]
               ) -> Optional[float]:
        a = self.get(num, case.size, case.batch, case.amp, case.train)
        b = self.get(den, case.size, case.batch, case.amp, case.train)
        if a is None or b is None:
            return None
        va, vb = stat(a), stat(b)
        return None if va is None or vb is None else va / vb

    def targets(self, size: Size = (800, 1344), big: Size = (1600, 2688)) -> List[str]:
        """The targets of the mode that was run (GPU targets on CUDA, CPU targets on the
        CPU) as measured ratios, judged on medians (the issue's statistic; the ratio of the
        minima -- the least disturbed rounds -- is shown next to it). A target whose case
        or models were not run says so; compiled twins, when run, are judged alike."""
        out: List[str] = []
        compiled = any(m.model.endswith(COMPILED) for m in self.measurements)

        def add(num: str, den: str, case: Case, limit: float, what: str = 'latency') -> None:
            for suffix in ('', COMPILED) if compiled else ('', ):
                n, d = num + suffix, den + suffix
                if what == 'memory':
                    v = self._ratio(n, d, case, (lambda m: m.peak_total_bytes) if self.cuda
                                    else (lambda m: m.peak_bytes))
                    extra = ''
                else:
                    v = self._ratio(n, d, case, lambda m: m.median)
                    by_min = self._ratio(n, d, case, lambda m: min(m.times))
                    extra = '' if by_min is None else f' (minima: {by_min:.3f})'
                text = f'{label(n)} / {label(d)} {what} ({case}, target <= {limit:g})'
                if v is None:
                    if not suffix:
                        out.append(f'- {text}: not measured in this run')
                    continue
                out.append(f'- {text}: {v:.3f}{extra} -> {"met" if v <= limit else "NOT met"}')

        if self.cuda:
            e16, e32, t16 = (Case(size, 2, 'fp16'), Case(size, 1, 'fp32'),
                             Case(size, 2, 'fp16', True))
            add('slab_pvt_t_deploy', 'pvt_t', e16, 0.55)
            add('slab_swin_t_deploy', 'swin_t', e16, 0.75)
            add('swin_prepbn_t_deploy', 'swin_t', e16, 0.75)
            add('slab_pvt_t_deploy', 'pvt_t', e32, 0.7)
            add('slab_swin_t_deploy', 'swin_t', e32, 0.9)
            add('slab_pvt_t', 'pvt_t', t16, 1.0)
            add('slab_swin_t', 'swin_t', t16, 1.15)
            add('slab_pvt_t', 'pvt_t', t16, 1.0, 'memory')
            add('slab_swin_t', 'swin_t', t16, 1.0, 'memory')
            return out

        e32 = Case(size, 1, 'fp32')
        add('slab_pvt_t_deploy', 'pvt_t', e32, 0.3)
        add('slab_swin_t_deploy', 'swin_t', e32, 0.8)
        return out + [f'Earlier CPU targets:\n{t}' if i == 0 else t
                      for i, t in enumerate(self._earlier_cpu_targets(size, big))]

    def _earlier_cpu_targets(self, size: Size, big: Size) -> List[str]:
        """The targets of the first CPU benchmark issue (eval, fp32, batch 1)."""
        out: List[str] = []
        hw = f'{size[0]}x{size[1]}'

        def ratio(num: Tuple[str, Size], den: Tuple[str, Size],
                  stat: Callable[[Measurement], float]) -> Optional[float]:
            a, b = self.get(*num), self.get(*den)
            return stat(a) / stat(b) if a and b else None

        def add(text: str, num: Tuple[str, Size], den: Tuple[str, Size],
                ok: Callable[[float], bool], speedup: bool = False) -> None:
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
            if m.model.startswith('slab') and m.case == Case(size) and m.gflops:
                v = m.gflops / self.gemm
                out.append(f'- {label(m.model)} GFLOP/s / GEMM GFLOP/s at {hw} (target >= '
                           f'0.40): {v:.2f} -> {"met" if v >= 0.4 else "NOT met"}')
        return out

    def plot(self, path: str) -> None:
        """Latency vs megapixels per call (batch x H x W), one panel per mode."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        modes = list(dict.fromkeys(m.case.mode for m in self.measurements))
        fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
        colours = dict(slab_pvt_t='tab:blue', pvt_t='tab:cyan', slab_swin_t='tab:red',
                       swin_t='tab:orange', swin_prepbn_t='tab:purple')
        unit, scale = ('ms', 1e3) if self.cuda else ('s', 1.0)
        where = (self.env.get('gpu', 'CUDA') if self.cuda else f'CPU, {self.threads} threads')
        for ax, mode in zip(axes[0], modes):
            for model in dict.fromkeys(m.model for m in self.measurements):
                ms = sorted((m for m in self.measurements
                             if m.model == model and m.case.mode == mode),
                            key=lambda m: (m.batch * m.size[0] * m.size[1], m.batch))
                if not ms:
                    continue
                base = base_name(model)
                ax.plot([m.batch * m.size[0] * m.size[1] / 1e6 for m in ms],
                        [m.median * scale for m in ms],
                        marker='s' if model.endswith(COMPILED) else 'o',
                        linestyle='--' if base.endswith('_deploy') else
                        (':' if model.endswith(COMPILED) else '-'),
                        color=colours.get(base.removesuffix('_deploy')), label=label(model))
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.set_xlabel('megapixels per call (batch x H x W)')
            ax.set_ylabel(f'latency, {unit} (median)')
            ax.set_title(f'{where}: {mode}')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize='small')
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
                  log: Callable[[str], None] = print,
                  *,
                  device: str = 'cpu',
                  batches: Sequence[int] = (1, ),
                  amps: Sequence[str] = ('fp32', ),
                  train: bool = False,
                  cases: Optional[Sequence[Case]] = None,
                  compile: bool = False,
                  compile_backend: str = 'inductor',
                  compile_mode: Optional[str] = None,
                  tf32: Optional[bool] = None,
                  on_case: Optional[Callable[['BenchmarkResult'], None]] = None
                  ) -> BenchmarkResult:
    """Measure ``models`` (names of :data:`MODELS`, or keys of ``factories``) in every
    case: ``cases``, or every combination of ``sizes`` x ``batches`` x ``amps`` (eval, or
    training steps with ``train``).

    Per case: ``warmup`` untimed calls of every model, then ``repeat`` rounds, each timing
    the calls of every model (the order rotates per round); then, untimed, one call for the
    peak memory and (once per model and size) one traced forward for the MACs.
    """
    if repeat < 1:
        raise ValueError('repeat must be >= 1')
    if cases is None:
        cases = [Case(tuple(s), b, a, train) for s in sizes for b in batches for a in amps]
    for c in cases:
        if c.amp not in AMP_DTYPES:
            raise ValueError(f'amp must be one of {list(AMP_DTYPES)}, got {c.amp!r}')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda: CUDA is not available in this process')
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    prev_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        return _run(models, list(cases), repeat, warmup, mini, flops, memory, factories, log,
                    dev, compile, compile_backend, compile_mode, on_case)
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32


def _env(dev: torch.device, gemm_n: int) -> Dict[str, str]:
    env = dict(torch=torch.__version__, python=platform.python_version(),
               cpu=_cpu_name(), cores=str(os.cpu_count()), device=str(dev),
               gemm_n=str(gemm_n), gemm_amp_n=str(gemm_n if dev.type == 'cuda' else 512))
    if dev.type == 'cuda':
        env.update(gpu=torch.cuda.get_device_name(dev), cuda=str(torch.version.cuda),
                   cudnn=str(torch.backends.cudnn.version()),
                   matmul_tf32=str(torch.backends.cuda.matmul.allow_tf32),
                   cudnn_tf32=str(torch.backends.cudnn.allow_tf32),
                   cudnn_benchmark=str(torch.backends.cudnn.benchmark))
    return env


def _run(models: Sequence[str], cases: List[Case], repeat: int, warmup: int, mini: bool,
         flops: bool, memory: bool, factories: Optional[Mapping[str, ModelFactory]],
         log: Callable[[str], None], dev: torch.device, compile: bool,
         compile_backend: str, compile_mode: Optional[str] = None,
         on_case: Optional[Callable[[BenchmarkResult], None]] = None) -> BenchmarkResult:
    cuda = dev.type == 'cuda'
    load = [os.getloadavg()[0]]
    built: Dict[str, nn.Module] = {}
    for name in models:
        model = factories[name]() if factories and name in factories \
            else build_backbone(name, mini)
        model.to(dev)
        model.eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
        built[name] = model
    if compile:
        import torch._dynamo as dynamo
        # every case is a new graph (shape, dtype, mode): keep them all ('recompile_limit'
        # since torch 2.6, 'cache_size_limit' before)
        for attr in ('recompile_limit', 'cache_size_limit'):
            if hasattr(dynamo.config, attr):
                setattr(dynamo.config, attr, max(getattr(dynamo.config, attr), 64))
        for name in list(built):
            built[name + COMPILED] = torch.compile(built[name], backend=compile_backend,
                                                   mode=compile_mode)
        # the one-time start-up of dynamo / the backend (imports, worker pools) is no
        # model's compile time
        t0 = time.perf_counter()
        torch.compile(lambda t: t * 2 + 1, backend=compile_backend)(torch.ones(8, device=dev))
        log(f'torch.compile start-up ({compile_backend}): {time.perf_counter() - t0:.1f} s')
    log(f'device: {dev}; threads: {torch.get_num_threads()}; models: {", ".join(built)}')
    gemm_n = 4096 if cuda else 2048
    gemm = [gemm_gflops(gemm_n, device=dev)]
    gemm_amp = {}
    for amp in dict.fromkeys(c.amp for c in cases):
        if AMP_DTYPES[amp] is not None:
            # (CPU: 512^3, a half-precision GEMM may be slow without native support)
            gemm_amp[amp] = gemm_gflops(gemm_n if cuda else 512, device=dev,
                                        dtype=AMP_DTYPES[amp])
    log(f'GEMM fp32 {gemm_n}^3: {gemm[0]:.1f} GFLOP/s' +
        ''.join(f', {k}: {v:.1f}' for k, v in gemm_amp.items()))
    rss_ok = not cuda and _reset_peak_rss() and _status_kb('VmHWM') is not None
    result: List[Measurement] = []
    missed: Dict[str, Dict[str, int]] = {}
    failures: Dict[str, str] = {}
    t_start = time.perf_counter()
    macs_cache: Dict[Tuple[str, Size], Tuple[int, Dict[str, int]]] = {}
    for case in cases:
        (h, w), batch = case.size, case.batch
        # the folded forms are inference-only
        names = [n for n in built if not (case.train and base_name(n).endswith('_deploy'))]
        x = torch.randn(batch, 3, h, w, device=dev)
        for name in names:
            set_mode(built[name], case.train)
        steps = {name: make_step(built[name], x, case) for name in names}
        meas = {name: Measurement(name, (h, w), batch=batch, amp=case.amp, train=case.train,
                                  weight_bytes=model_bytes(built[name])) for name in names}
        log(f'-- {case}: {len(names)} models ({time.perf_counter() - t_start:.0f} s into the run)')

        def fail(name: str, what: str, e: BaseException) -> None:
            """A model that fails in a case (an error, CUDA out of memory) is dropped from
            the case and reported; the run goes on."""
            failures[f'{label(name)} {case}'] = f'{what}: {type(e).__name__}: {str(e)[:300]}'
            log(f'{name:>28} {case}: FAILED ({what}): {type(e).__name__}: {str(e)[:300]}')
            names.remove(name)
            if cuda:
                torch.cuda.empty_cache()

        # warm-up (the first call of a compiled model compiles: timed on its own)
        last: Dict[str, float] = {}
        for i in range(max(warmup, 1 if compile else 0)):
            for name in list(names):
                try:
                    if i == 0 and name.endswith(COMPILED):
                        breaks = _graph_breaks()
                        _sync(dev)
                        t0 = time.perf_counter()
                        steps[name]()
                        _sync(dev)
                        meas[name].first_call = time.perf_counter() - t0
                        meas[name].graph_breaks = _graph_breaks() - breaks
                        log(f'{name:>28} {case}: first call (compiles) '
                            f'{meas[name].first_call:.1f} s, {meas[name].graph_breaks} graph '
                            'breaks')
                    elif i < warmup:
                        last[name] = time_calls(steps[name], 1, dev)
                except Exception as e:  # noqa: BLE001 (reported, the run goes on)
                    fail(name, 'warm-up', e)
        for name in names:  # CUDA: rounds of ~50 ms; CPU: one call
            t = last.get(name)
            meas[name].inner = max(1, min(10, round(0.05 / t))) if cuda and t else 1
        for r in range(repeat):
            order = names[r % len(names):] + names[:r % len(names)] if names else []
            for name in order:
                rss0 = _status_kb('VmRSS') if rss_ok and _reset_peak_rss() else None
                try:
                    meas[name].times.append(time_calls(steps[name], meas[name].inner, dev))
                except Exception as e:  # noqa: BLE001
                    fail(name, 'timed round', e)
                    continue
                if rss0 is not None:
                    grow = (_status_kb('VmHWM') - rss0) * 1024
                    meas[name].rss_bytes = max(meas[name].rss_bytes or 0, grow)
        gemm.append(gemm_gflops(gemm_n, device=dev))
        load.append(os.getloadavg()[0])
        log(f'GEMM fp32 {gemm_n}^3 after {case}: {gemm[-1]:.1f} GFLOP/s, load {load[-1]:.2f}')
        for name in list(names):
            m = meas[name]
            if memory:
                try:
                    if case.train:
                        built[name].zero_grad(set_to_none=True)
                    m.peak_bytes = cuda_peak_alloc(steps[name], dev) if cuda \
                        else cpu_peak_alloc(steps[name])
                except Exception as e:  # noqa: BLE001
                    log(f'{name:>28} {case}: memory measurement failed: {e!r:.300}')
            if case.train:
                built[name].zero_grad(set_to_none=True)
            base = base_name(name)
            if flops and base in built:
                key = (base, (h, w))
                if key not in macs_cache:
                    set_mode(built[base], False)
                    try:
                        with torch.no_grad():
                            macs_cache[key] = count_macs(built[base], x[:1])
                    except Exception as e:  # noqa: BLE001
                        log(f'{base:>28} {h}x{w}: MAC count failed: {e!r:.300}')
                        macs_cache[key] = (None, {})
                    set_mode(built[base], case.train)
                if macs_cache[key][0] is not None:
                    m.macs = macs_cache[key][0] * batch
                missed[base] = macs_cache[key][1]
            unit, scale = ('ms', 1e3) if cuda else ('s', 1.0)
            log(f'{name:>28} {case}: {m.median * scale:.3f} {unit} '
                f'[{min(m.times) * scale:.3f}, {max(m.times) * scale:.3f}]'
                + (f' x{m.inner}' if m.inner > 1 else '')
                + (f', {m.macs / 1e9:.3g} GMAC' if m.macs else '')
                + (f', peak {m.peak_bytes / 2 ** 20:.0f} MB' if m.peak_bytes is not None
                   else ''))
            result.append(m)
        for name in steps:
            set_mode(built[name], False)
            if case.train:
                built[name].zero_grad(set_to_none=True)
        del steps, x
        if cuda:
            torch.cuda.empty_cache()
        if on_case is not None:
            on_case(BenchmarkResult(list(result), list(gemm), torch.get_num_threads(), repeat,
                                    warmup, _env(dev, gemm_n), dict(missed), tuple(load),
                                    str(dev), gemm_amp, dict(failures)))
    return BenchmarkResult(result, gemm, torch.get_num_threads(), repeat, warmup,
                           _env(dev, gemm_n), missed, tuple(load), str(dev), gemm_amp, failures)


def run_ort_benchmark(models: Sequence[str], sizes: Sequence[Size], repeat: int = 3,
                      warmup: int = 1, threads: int = 2, mini: bool = False,
                      log: Callable[[str], None] = print):
    """ONNX Runtime (CPU EP) next to PyTorch for ``models`` (names of :data:`MODELS`; the
    ``*_deploy`` ones are exported folded): same sizes, same thread count, both runtimes
    timed interleaved round by round, plus ORT's relative error against PyTorch. See
    :func:`mmslab.onnx_export.ort_latency_benchmark`. Needs the deploy extra."""
    from .onnx_export import ort_latency_benchmark
    built = {name: build_backbone(name, mini) for name in models}
    stock = {name: STOCK[name.removesuffix('_deploy')] for name in models
             if STOCK.get(name.removesuffix('_deploy')) in models}
    return ort_latency_benchmark(built, sizes, repeat, warmup, threads, MODELS, stock, log)


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
    parser.add_argument('--device', choices=['cpu', 'cuda'], default=None,
                        help='default: cpu (cuda with --preset gpu)')
    parser.add_argument('--preset', choices=list(PRESETS), default=None,
                        help='gpu: the issue\'s GPU matrix -- eval fp32, eval fp16 autocast '
                             'and fp16 AMP training step at batch 1 and 2 x 800x1344, batch 16 '
                             'x 512x512, batch 1 x 1600x2688 (replaces --sizes/--batch/--amp/'
                             '--train)')
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=None,
                        help='input sizes HxW (default: 512x512 800x1344 1600x2688)')
    parser.add_argument('--batch', nargs='+', type=int, default=[1], help='batch size(s)')
    parser.add_argument('--amp', nargs='+', choices=list(AMP_DTYPES), default=['fp32'],
                        help='autocast dtype(s) of the call; fp32 = no autocast')
    parser.add_argument('--train', action='store_true',
                        help='time a training step (forward + backward) instead of eval')
    parser.add_argument('--compile', action='store_true',
                        help='also time a torch.compile\'d twin of every model')
    parser.add_argument('--compile-backend', default='inductor',
                        help='torch.compile backend (default inductor)')
    parser.add_argument('--compile-mode', default=None,
                        help='torch.compile mode (inductor), e.g. reduce-overhead (CUDA graphs)')
    parser.add_argument('--tf32', choices=['default', 'on', 'off'], default='default',
                        help='CUDA: set torch.backends.{cuda.matmul,cudnn}.allow_tf32')
    parser.add_argument('--repeat', type=int, default=None,
                        help='timed rounds, median of them (default: 3 on CPU, 7 on CUDA)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed rounds first (default: 1 on CPU, 3 on CUDA)')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--out-dir', default='work_dirs/benchmark')
    parser.add_argument('--plot', default='latency.png', help='PNG name inside --out-dir')
    parser.add_argument('--mini', action='store_true', help='small widths (smoke test)')
    parser.add_argument('--no-flops', action='store_true', help='skip the MAC count')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory profile')
    parser.add_argument('--ort', action='store_true',
                        help='instead: ONNX Runtime (CPU) vs PyTorch latency of the models '
                             'exported to ONNX (needs the deploy extra); writes ort.md / .json')
    args = parser.parse_args(argv)
    device = args.device or ('cuda' if args.preset == 'gpu' else 'cpu')
    cuda = device == 'cuda'
    repeat = args.repeat if args.repeat is not None else (7 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    sizes = args.sizes or list(DEFAULT_SIZES)
    import mmslab  # noqa: F401  (registers the SLAB modules)
    if args.ort:
        ort = run_ort_benchmark(args.models, sizes, repeat, warmup, args.threads, args.mini)
        os.makedirs(args.out_dir, exist_ok=True)
        print('\n' + ort.table())
        with open(os.path.join(args.out_dir, 'ort.md'), 'w') as f:
            f.write(ort.table() + '\n')
        with open(os.path.join(args.out_dir, 'ort.json'), 'w') as f:
            json.dump(asdict(ort), f, indent=1)
        print(f'wrote {args.out_dir}/ort.md and ort.json')
        return ort
    cases = PRESETS[args.preset] if args.preset else None
    os.makedirs(args.out_dir, exist_ok=True)
    res = run_benchmark(args.models, sizes, repeat, warmup, args.threads, args.mini,
                        not args.no_flops, not args.no_memory, device=device,
                        batches=args.batch, amps=args.amp, train=args.train, cases=cases,
                        compile=args.compile, compile_backend=args.compile_backend,
                        compile_mode=args.compile_mode,
                        tf32=None if args.tf32 == 'default' else args.tf32 == 'on',
                        # the results so far after every case (a run cut short keeps them)
                        on_case=lambda partial: write_report(partial, args.out_dir))
    report = write_report(res, args.out_dir, args.plot)
    print('\n' + report)
    print(f'wrote {args.out_dir}/benchmark.md, benchmark.json and '
          f'{os.path.join(args.out_dir, args.plot)}')
    return res


def write_report(res: BenchmarkResult, out_dir: str, plot: Optional[str] = None) -> str:
    """Write ``benchmark.md`` (table + targets), ``benchmark.json`` and, given ``plot``,
    the PNG into ``out_dir``; return the markdown."""
    report = res.table() + '\n\nTargets:\n' + '\n'.join(res.targets()) + '\n'
    with open(os.path.join(out_dir, 'benchmark.md'), 'w') as f:
        f.write(report)
    with open(os.path.join(out_dir, 'benchmark.json'), 'w') as f:
        json.dump(asdict(res), f, indent=1)
    if plot:
        res.plot(os.path.join(out_dir, plot))
    return report
