"""Sizes that stay symbolic: the one rule the SLAB modules follow where a Python branch on a
size could freeze it.

While a module is traced (``torch.jit.trace``: the TorchScript ONNX exporter), compiled or
exported (``torch.compile``, ``torch.export``: the dynamo ONNX exporter), its sizes may be
symbolic. A branch taken on the example's sizes (skip a pad of 0, skip a resize to the same
grid, ...) would then become a guard, a recompile or a graph frozen to the example, so
the modules take the branch that holds for every size (:func:`symbolic_sizes`); eager code
keeps its shortcuts. (Not ``isinstance(size, torch.SymInt)``: dynamo, which traces
``torch.compile`` and strict ``torch.export``, answers False for a symbolic size.) Padded
sizes are written ``ceil_div(n, m) * m`` (not ``n + (m - n % m) % m``): the same value,
but a symbolic expression that the shape solver simplifies (``ceil_div(n, m) * m // m`` is
``ceil_div(n, m)``), so no guard is needed to see that a padded map splits into windows.
"""
import torch


def symbolic_sizes() -> bool:
    """Whether sizes may be symbolic here: traced, compiled or exported."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def ceil_div(n, m):
    """``ceil(n / m)`` of sizes (Python or symbolic ints); ``(n + m - 1) // m``, not
    ``-(-n // m)``: ONNX's integer Div truncates toward zero."""
    return (n + m - 1) // m

