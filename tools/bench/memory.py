"""Peak memory of a call.

* CPU: the peak of the bytes of tensors alive at once among those the call allocates
  through PyTorch's CPU allocator (the ``[memory]`` events of
  ``torch.profiler.profile(profile_memory=True)``): activations, temporaries and (train)
  gradients, not weights or the input, not library-internal scratch; and, as an OS
  cross-check, :class:`PeakRSS`: the growth of the process's peak RSS (``VmHWM``, reset
  through ``/proc/self/clear_refs``).
* CUDA: ``torch.cuda.max_memory_allocated()`` over the call (after
  ``torch.cuda.reset_peak_memory_stats()``) minus what was allocated before it -- the same
  "what the call allocates"; :func:`model_bytes` gives the model's own weights and buffers.
"""
from typing import Any, Callable, Optional

import torch
import torch.nn as nn


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


def cuda_peak_alloc(fn: Callable[[], Any], device: torch.device) -> int:
    """``max_memory_allocated`` over ``fn()`` minus what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_alloc(fn: Callable[[], Any], device: torch.device) -> int:
    """What ``fn()`` allocates at its peak, on ``device`` (see the module's docstring)."""
    return cuda_peak_alloc(fn, device) if device.type == 'cuda' else cpu_peak_alloc(fn)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``."""
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


class PeakRSS:
    """Growth of the process's peak RSS over a call (Linux ``/proc``; elsewhere
    :attr:`available` is False and :meth:`start` returns None)."""

    def __init__(self) -> None:
        self.available = _reset_peak_rss() and _status_kb('VmHWM') is not None

    def start(self) -> Optional[int]:
        """Reset the peak; the current RSS in kB (None when not available)."""
        return _status_kb('VmRSS') if self.available and _reset_peak_rss() else None

    @staticmethod
    def growth(start_kb: int) -> int:
        """Bytes the peak RSS grew by since :meth:`start` returned ``start_kb``."""
        return (_status_kb('VmHWM') - start_kb) * 1024
