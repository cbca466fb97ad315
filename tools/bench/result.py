"""What a benchmark run measured: one :class:`Measurement` per model and case, and the
run's :class:`BenchmarkResult` (with the machine's GEMM rates, load and environment)."""
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .cases import Case, Size
from .models import COMPILED, stock_twin


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
    faults: List[int] = field(default_factory=list)  # minor page faults per call, per round

    @property
    def case(self) -> Case:
        return Case(tuple(self.size), self.batch, self.amp, self.train)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def faults_per_call(self) -> Optional[int]:
        """Median minor page faults of the process per timed call (None: not counted)."""
        return int(statistics.median(self.faults)) if self.faults else None

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

    def get(self, model: str, case: Case) -> Optional[Measurement]:
        return next((m for m in self.measurements if m.model == model and m.case == case),
                    None)

    def stock(self, m: Measurement) -> Optional[Measurement]:
        """The stock twin measured in ``m``'s case (compiled when ``m`` is and the
        compiled twin was run)."""
        twin = stock_twin(m.model)
        if twin is None:
            return None
        if m.model.endswith(COMPILED):
            compiled = self.get(twin + COMPILED, m.case)
            if compiled is not None:
                return compiled
        return self.get(twin, m.case)

    @property
    def compiled(self) -> bool:
        """Whether compiled twins were run."""
        return any(m.model.endswith(COMPILED) for m in self.measurements)

    @property
    def gemm(self) -> float:
        """The highest float32 GEMM rate measured in the run (start, and after each case)."""
        return max(self.gemm_gflops)

    def gemm_rate(self, amp: str) -> Optional[float]:
        return self.gemm if amp == 'fp32' else self.gemm_amp.get(amp)

    @property
    def cuda(self) -> bool:
        return self.device.startswith('cuda')
