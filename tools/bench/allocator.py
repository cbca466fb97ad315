"""The process's memory allocator, as a CPU benchmark sees it.

PyTorch's CPU tensors come from ``malloc``. glibc serves a large block (above its mmap
threshold, which adapts up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and
gives the top of its heap back to the OS beyond a trim threshold. A forward pass that
allocates large activations and temporaries then page-faults every page of them in again
on every call: the kernel zeroes each 4 KiB page on its first touch (about 1 us a page on
a 2-core AMD EPYC VM). How many faults a call takes depends on the model's allocation
pattern and on the allocator's state, not on its arithmetic.

* :func:`minor_faults`: the process's minor page faults so far (all threads); the
  benchmark records them per timed call.
* :func:`retain_freed_memory` (``tools/benchmark.py --allocator retain``): glibc serves
  every block up to 1 GiB from its heap and never trims it, so the process keeps and
  reuses what it freed, as an inference server with jemalloc / tcmalloc (or glibc's
  ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) does: the steady state, in which
  the calls take next to no page faults. It holds for the rest of the process.
* :func:`describe`: the allocator of this process, for the report's header.
"""
import ctypes
import os
from typing import Optional

#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap once :func:`retain_freed_memory` ran
RETAIN_BYTES = 1 << 30
#: what --allocator accepts: the process's allocator as launched, or freed memory retained
MODES = ('default', 'retain')

_retained = False


def minor_faults() -> Optional[int]:
    """Minor page faults of this process so far (all its threads); None where the OS does
    not count them (no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def glibc_version() -> Optional[str]:
    """The C library's version where it is glibc, else None (musl, macOS, Windows)."""
    try:
        get_version = ctypes.CDLL(None).gnu_get_libc_version
    except (AttributeError, OSError, TypeError):
        return None
    get_version.restype = ctypes.c_char_p
    return get_version().decode()


def retain_freed_memory() -> None:
    """Make glibc keep what the process frees (see the module docstring); for the rest of
    the process. Raises RuntimeError where the C library is not glibc."""
    global _retained
    if glibc_version() is None:
        raise RuntimeError('--allocator retain sets glibc malloc options (mallopt); this '
                           'process does not run on glibc. Use --allocator default, and '
                           'your allocator\'s own settings (e.g. jemalloc, tcmalloc)')
    mallopt = ctypes.CDLL(None).mallopt
    for param, value in ((M_MMAP_THRESHOLD, RETAIN_BYTES), (M_TRIM_THRESHOLD, 2 ** 31 - 1)):
        if not mallopt(param, value):
            raise RuntimeError(f'glibc mallopt({param}, {value}) was refused')
    _retained = True


def describe() -> str:
    """The allocator of this process: glibc's version and whether it retains freed memory,
    an ``LD_PRELOAD`` and the ``MALLOC_*`` settings of the environment."""
    version = glibc_version()
    text = f'glibc {version} malloc' if version else 'C library malloc (not glibc)'
    text += ', freed memory retained (--allocator retain)' if _retained else \
        ', as launched'
    preload = os.environ.get('LD_PRELOAD')
    if preload:
        text += f'; LD_PRELOAD={preload}'
    tuned = sorted(k for k in os.environ if k.startswith('MALLOC_'))
    if tuned:
        text += '; ' + ', '.join(f'{k}={os.environ[k]}' for k in tuned)
    return text
