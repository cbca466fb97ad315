"""Timing of calls: warm-up, CPU wall time or CUDA events, interleaved rounds, spreads.

One module for every latency mmslab reports: the benchmark tool (``tools/benchmark.py``)
and the ONNX Runtime vs PyTorch comparison (:func:`mmslab.onnx_latency.ort_latency_benchmark`).

* :func:`time_calls`: seconds per call of ``n`` back-to-back calls -- CUDA events on a
  CUDA device (after what was queued before has finished), ``time.perf_counter`` wall
  time elsewhere;
* :func:`warm_up` / :func:`interleaved_rounds`: untimed rounds in a fixed order, then
  timed rounds whose order rotates by one per round, so that a drifting machine load hits
  every candidate alike;
* :func:`median` / :func:`spread`: the statistics reported, ``median [min, max]``;
* :func:`cpu_name`: the processor the times were taken on.
"""
import platform
import statistics
import time
from typing import Any, Callable, Sequence, TypeVar

import torch

K = TypeVar('K')


def sync(device: Any) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], n: int = 1, device: Any = 'cpu') -> float:
    """Seconds per call of ``n`` back-to-back calls of ``fn``: CUDA events on a CUDA
    device (the calls queued before have finished first), wall time elsewhere."""
    device = torch.device(device)
    if device.type == 'cuda':
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
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


def calls_per_round(seconds_per_call: float, round_seconds: float = 0.05,
                    most: int = 10) -> int:
    """How many back-to-back calls make a timed round of about ``round_seconds`` (at
    least 1, at most ``most``): short CUDA calls are timed in groups, so that the event
    resolution and the launch of the first call do not dominate."""
    return max(1, min(most, round(round_seconds / seconds_per_call)))


def warm_up(keys: Sequence[K], rounds: int, call: Callable[[int, K], Any]) -> None:
    """``rounds`` untimed rounds of ``call(round, key)`` for every key, in the order of
    ``keys`` (read again each round: a key removed from it leaves the following rounds)."""
    for r in range(rounds):
        for key in list(keys):
            call(r, key)


def interleaved_rounds(keys: Sequence[K], repeat: int, timed: Callable[[K], Any]) -> None:
    """``repeat`` rounds of ``timed(key)`` for every key; round ``r`` starts at key
    ``r mod len(keys)`` (the order rotates, so no candidate always runs first or after the
    same one). ``keys`` is read again each round: a key removed from it (a candidate that
    failed) leaves the following rounds."""
    for r in range(repeat):
        if not keys:
            return
        k = r % len(keys)
        for key in list(keys[k:]) + list(keys[:k]):
            timed(key)


def median(times: Sequence[float]) -> float:
    """The median of ``times`` (``nan`` for none)."""
    return statistics.median(times) if times else float('nan')


def spread(times: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``'median [min, max]'`` of ``times`` times ``scale`` (``'-'`` for none)."""
    if not times:
        return '-'
    f = lambda t: f'{t * scale:.{digits}f}'  # noqa: E731
    return f'{f(median(times))} [{f(min(times))}, {f(max(times))}]'


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()

