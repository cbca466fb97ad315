"""``--ort``: ONNX Runtime (CPU EP) next to PyTorch for the benchmark's models, through
:func:`mmslab.onnx_export.ort_latency_benchmark` (needs the deploy extra)."""
from typing import Callable, Sequence

from .cases import Size
from .models import MODELS, build_backbone, stock_twin


def run_ort_benchmark(models: Sequence[str], sizes: Sequence[Size], repeat: int = 3,
                      warmup: int = 1, threads: int = 2, mini: bool = False,
                      log: Callable[[str], None] = print):
    """``models`` (names of :data:`MODELS`; the ``*_deploy`` ones are exported folded) in
    ONNX Runtime and PyTorch: same sizes, same thread count, both runtimes timed
    interleaved round by round, plus ORT's relative error against PyTorch."""
    from mmslab.onnx_export import ort_latency_benchmark
    built = {name: build_backbone(name, mini) for name in models}
    stock = {name: stock_twin(name) for name in models if stock_twin(name) in models}
    return ort_latency_benchmark(built, sizes, repeat, warmup, threads, MODELS, stock, log)
