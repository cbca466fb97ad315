#!/usr/bin/env python
"""The PRepBN from-scratch study: trains Mask R-CNN from scratch once per variant and
seed, optionally BN-recalibrates and tests, and writes the markdown table of box / mask
AP (mean +- std over the seeds) and s/iteration.

    python tools/prepbn_study.py --work-dir work_dirs/prepbn_study   # the README table
    python tools/prepbn_study.py --variants prepbn_bn ln_kept --seeds 0 1 2 3
    python tools/prepbn_study.py --work-dir work_dirs/prepbn_study --table-only

Every run is an mmdet ``tools/train.py`` subprocess (what `mim train mmdet` runs) of configs/study/prepbn_study_base.py
changed for the variant (--base-config); finished runs are kept (<work-dir>/runs/
<variant>_s<seed>/result.json): rerunning a command resumes an interrupted study.

Defaults: 300 iterations of batch 4 at 128 px (200 training / 50 val images), one torch
thread per run (on a shared CPU, two OpenMP threads that are descheduled in turn run many
times slower than one), 3 seeds, BN recalibration over 100 batches (two passes over the
training set) for prepbn_bn and bn_alpha0_pvtinit. See tools/prepbn/variants.py for the
variants.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional

from prepbn.data import make_data
from prepbn.runs import finished_results, recal_one, train_one
from prepbn.table import table
from prepbn.variants import DEFAULT_RECAL_VARIANTS, DEFAULT_VARIANTS, VARIANTS

from mmslab.fileio import atomic_write_text
from mmslab.validation import argparse_int, argparse_path

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BASE_CONFIG = osp.join(REPO, 'configs', 'study', 'prepbn_study_base.py')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', type=argparse_path, default='work_dirs/prepbn_study')
    p.add_argument('--base-config', type=argparse_path, default=BASE_CONFIG,
                   help='the study\'s base config (default: %(default)s)')
    p.add_argument('--variants', nargs='+', choices=sorted(VARIANTS),
                   default=list(DEFAULT_VARIANTS))
    p.add_argument('--seeds', nargs='+', type=argparse_int(min=0), default=[0, 1, 2])
    p.add_argument('--iters', type=argparse_int(min=10), default=300,
                   help='training iterations per run')
    p.add_argument('--image-size', type=argparse_int(min=32), default=128)
    p.add_argument('--num-train', type=argparse_int(min=1), default=200)
    p.add_argument('--num-val', type=argparse_int(min=1), default=50)
    p.add_argument('--batch-size', type=argparse_int(min=1), default=4)
    p.add_argument('--threads', type=argparse_int(min=1), default=1,
                   help='torch threads of every training subprocess')
    p.add_argument('--recal-iters', nargs='*', type=argparse_int(min=1), default=[100],
                   help='BN recalibration batches (none: no recalibration)')
    p.add_argument('--recal-variants', nargs='*', choices=sorted(VARIANTS),
                   default=list(DEFAULT_RECAL_VARIANTS))
    p.add_argument('--out', type=argparse_path, default=None,
                   help='markdown table (default: <work-dir>/table.md)')
    p.add_argument('--force', action='store_true', help='redo finished runs')
    p.add_argument('--table-only', action='store_true',
                   help='train nothing: the table of every finished run of --variants (all '
                        'seeds found) and of their recalibrations')
    args = p.parse_args(argv)
    if not args.table_only and not osp.isfile(args.base_config):
        p.error(f'argument --base-config: no such file: {args.base_config}')
    return args


def run_study(work_root: str, data_root: str, args: argparse.Namespace) -> List[dict]:
    """Train every variant x seed (and the BN recalibrations) that has no result yet."""
    results = []
    # seed-major: an interrupted study has every variant at the first seeds
    for seed, variant in [(s, v) for s in args.seeds for v in args.variants]:
        r = train_one(work_root, osp.abspath(args.base_config), variant, seed, data_root,
                      args.image_size, args.iters, args.batch_size, args.threads, args.force)
        print(f'[prepbn_study] {variant} seed {seed}: box {r["bbox_mAP"]:.3f} mask '
              f'{r["segm_mAP"]:.3f} {r["s_per_iter"]:.2f} s/iter ({r["wall_s"]:.0f} s)',
              flush=True)
        results.append(r)
    for variant in args.recal_variants:
        if variant not in args.variants:
            continue
        for iters in args.recal_iters:
            for base in [r for r in results if r['variant'] == variant]:
                r = recal_one(work_root, base, iters, args.threads, args.force)
                print(f'[prepbn_study] {r["variant"]} seed {r["seed"]}: box '
                      f'{r["bbox_mAP"]:.3f} mask {r["segm_mAP"]:.3f} ({r["wall_s"]:.0f} s)',
                      flush=True)
                results.append(r)
    return results


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    work_root = osp.abspath(args.work_dir)
    os.makedirs(work_root, exist_ok=True)
    data_root = make_data(osp.join(work_root, 'data'), args.num_train, args.num_val,
                          args.image_size)
    if args.table_only:
        results = finished_results(work_root, args.variants, args.recal_variants)
    else:
        results = run_study(work_root, data_root, args)
    command = 'python tools/prepbn_study.py ' + ' '.join(argv if argv is not None
                                                          else sys.argv[1:])
    setup = (f'Mask R-CNN from scratch on the synthetic shapes set ({args.num_train} train / '
             f'{args.num_val} val images, {args.image_size} px), {args.iters} iterations of '
             f'batch {args.batch_size}, AdamW 1e-3 with {max(1, args.iters // 10)} warmup '
             'iterations and cosine decay; the demo\'s narrow SLAB-PVT (embed_dims '
             '[32, 64, 128, 256], depths [1, 1, 2, 1]) and heads with 64 sampled anchors / RoIs '
             'and 100 proposals per image; box / mask AP on the val '
             'split, mean ± sample std over the seeds; s/iter: training time per iteration '
             f'({args.threads} thread(s) per run) of the fastest seed (the machine was shared: '
             'other seeds ran under load).')
    text = table(results, command.strip(), setup)
    atomic_write_text(text, args.out or osp.join(work_root, 'table.md'))
    atomic_write_text(json.dumps(results, indent=1), osp.join(work_root, 'results.json'))
    print(text)
    return text


if __name__ == '__main__':
    main()
