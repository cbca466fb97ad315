"""Float comparisons that hold on any CPU.

Float32 results differ between CPUs (and thread counts): BLAS and oneDNN kernels block
and vectorise their sums differently, so two mathematically equal computations round
differently. The suite therefore

* checks an **exactness** claim (a fold, a second route to the same function, a
  re-computation) in float64, to ``EXACT`` of the reference's largest magnitude;
* compares a result whose point *is* float32 (autocast computing in float32, a compiled
  graph, ONNX Runtime) by its error relative to the reference's largest magnitude,
  against ``float32_tol``: float32's rounding scaled by the length of the reductions
  behind the result.

Importable as ``_tolerance`` (``pythonpath`` in pyproject.toml). With
``MMSLAB_TOLERANCE_LOG=<file>`` every comparison appends ``<test> <error> <tolerance>`` to
that file (the margins in docs/testing.md were read this way).
"""
import math
import os

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
# float64 rounding (eps 2.2e-16) through the mini models stays below 1e-13; 1e-10 leaves
# room for the deepest of them and still fails any real difference (a float32 step, a
# wrong fold) by orders of magnitude
EXACT = 1e-10


def float32_tol(reduction_len: int, layers: int = 1, margin: float = 16.0) -> float:
    """Relative (to the largest magnitude) tolerance of a float32 result: each of
    ``layers`` reductions of length ``reduction_len`` contributes ``eps * sqrt(K)``
    (rounding errors of a K-term sum grow as a random walk), times ``margin``."""
    return margin * EPS32 * math.sqrt(max(1, reduction_len)) * max(1, layers)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``, computed in float64."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}'
    if e.numel() == 0:
        return 0.0
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float,
                     msg: str = '') -> None:
    err = rel_error(actual, expected)
    log = os.environ.get('MMSLAB_TOLERANCE_LOG')
    if log:
        test = os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]
        with open(log, 'a') as f:
            f.write(f'{test}{"/" + msg if msg else ""} {err:.3e} {tol:.3e}\n')
    assert err <= tol, (f'{msg + ": " if msg else ""}max |a - b| / max |b| = {err:.3g} '
                        f'> {tol:.3g}')
