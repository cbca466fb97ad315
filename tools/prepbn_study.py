#!/usr/bin/env python
"""The PRepBN from-scratch study of issue 13 (see mmslab/prepbn_study.py).

    python tools/prepbn_study.py [--variants ...] [--seeds 0 1 2] [--iters 200] \
        [--image-size 128] [--recal-iters 200] [--work-dir work_dirs/prepbn_study]

Writes the synthetic shapes set, trains Mask R-CNN from scratch once per variant and
seed (`mim train mmdet`), optionally BN-recalibrates and tests, and prints / writes the
markdown table of box / mask AP (mean +- std over the seeds) and s/iteration.
"""
import os.path as osp
import sys

try:
    from mmslab.prepbn_study import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from mmslab.prepbn_study import main

if __name__ == '__main__':
    main()
