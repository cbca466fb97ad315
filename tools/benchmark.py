"""Benchmark the SLAB backbones against mmdet's PVT-T / Swin-T, on CPU or CUDA.

CPU (eval forward, batch 1, fp32; the README's CPU table):

    PYTHONPATH=. .venv/bin/python tools/benchmark.py --threads 2 --repeat 3 \
        --sizes 512x512 800x1344 1600x2688 --out-dir work_dirs/benchmark

CUDA, the issue's whole GPU matrix in one run (eval fp32, eval fp16 autocast, fp16 AMP
training step; batch 1 and 2 at 800x1344, batch 16 at 512x512, batch 1 at 1600x2688):

    python3 tools/benchmark.py --preset gpu --out-dir work_dirs/benchmark_gpu

Other modes: ``--device cuda|cpu``, ``--amp fp32 fp16 bf16`` (autocast dtypes, several
allowed), ``--train`` (training step: forward + backward), ``--batch N [N ...]``,
``--compile`` (also time a torch.compile'd twin of every model; compile time reported
separately), ``--tf32 on|off``, ``--models ...``, ``--mini`` (smoke test).

Prints a markdown table and the targets of the mode that was run, writes benchmark.md /
.json (also after every case, so a run cut short keeps what it measured) and a
latency-vs-megapixels plot. See mmslab/benchmark.py for what is measured and how.
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmslab.benchmark import main  # noqa: E402

if __name__ == '__main__':
    warnings.filterwarnings('ignore')
    main()
