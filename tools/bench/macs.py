"""MACs of a forward: multiply-accumulates of the matmul-type ops, counted by mmengine's
``FlopAnalyzer`` on a traced forward.

Counted: linear, matmul / bmm / baddbmm / addmm_, einsum, convolutions and
scaled-dot-product attention (the last three of those, which the analyzer does not know,
get handles here). Element-wise ops (norms, activations, softmax, adds) are not counted,
for every model alike; SLA is all matmuls + one depthwise conv, so its cost is in the
count.
"""
from math import prod
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn


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
