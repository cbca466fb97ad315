"""Smoke test of the benchmark tool (mini widths, one tiny size, one round)."""
import os

import pytest
import torch

from mmslab.benchmark import MODELS, count_macs, main
from mmslab.models import SimplifiedLinearAttention

pytest.importorskip('mmdet')


def test_benchmark_smoke(tmp_path):
    res = main(['--mini', '--sizes', '64x64', '--repeat', '1', '--warmup', '0',
                '--threads', '1', '--out-dir', str(tmp_path)])
    table = res.table()
    for label in MODELS.values():
        assert f'| {label} | 64x64 |' in table
    assert all(m.macs and m.macs > 0 and m.peak_bytes is not None and len(m.times) == 1
               for m in res.measurements)
    assert not any(res.missed_ops.values()), res.missed_ops
    assert 'Targets:' in (tmp_path / 'benchmark.md').read_text()
    assert os.path.getsize(tmp_path / 'latency.png') > 0


def test_sla_macs_are_counted():
    """The analyzer sees every matmul of SLA: projections, k^T v, q [k^T v | k^T 1], dwc."""
    c, heads, h, w = 32, 2, 6, 8
    d, n = c // heads, h * w

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = SimplifiedLinearAttention(c, heads, (h, w))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, (h, w))

    macs, missed = count_macs(Wrap().eval(), torch.randn(1, n, c))
    expected = (n * c * 3 * c + n * c * c        # qkv, proj
                + heads * d * n * d              # k^T v
                + heads * n * d * (d + 1)        # q [k^T v | k^T 1]
                + n * c * 25)                    # depthwise 5x5
    assert macs == expected and not missed
