"""``--ort``: ONNX Runtime (CPU EP) next to PyTorch for the benchmark's models, through
:func:`mmslab.onnx_latency.ort_latency_benchmark` (needs the deploy extra)."""
from typing import Callable, Optional, Sequence

from .cases import Size
from .models import MODELS, build_backbone, stock_twin


def run_ort_benchmark(models: Sequence[str], sizes: Sequence[Size], repeat: int = 3,
                      warmup: int = 1, threads: int = 2, mini: bool = False,
                      log: Callable[[str], None] = print,
                      exporters: Optional[Sequence[str]] = None):
    """``models`` (names of :data:`MODELS`; the ``*_deploy`` ones are exported folded) in
    ONNX Runtime and PyTorch: same sizes, same thread count, both runtimes timed
    interleaved round by round, plus ORT's relative error against PyTorch; one ORT row per
    model and exporter (``exporters``: ``'dynamo'`` / ``'torchscript'``, default both
    where the dynamo exporter runs, else TorchScript)."""
    from mmslab.onnx_exporters import EXPORTERS, default_exporter
    from mmslab.onnx_latency import ort_latency_benchmark
    if exporters is None:
        exporters = list(EXPORTERS) if default_exporter() == 'dynamo' else ['torchscript']
    built = {name: build_backbone(name, mini) for name in models}
    stock = {name: stock_twin(name) for name in models if stock_twin(name) in models}
    return ort_latency_benchmark(built, sizes, repeat, warmup, threads, MODELS, stock, log,
                                 exporters)
