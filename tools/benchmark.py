"""Benchmark the SLAB backbones against mmdet's PVT-T / Swin-T on CPU.

    PYTHONPATH=. .venv/bin/python tools/benchmark.py --threads 2 --repeat 3 \
        --sizes 512x512 800x1344 1600x2688 --out-dir work_dirs/benchmark

Prints a markdown table and the issue's target ratios, writes benchmark.md / .json and a
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
