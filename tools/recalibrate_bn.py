"""Re-estimate the RepBN/PRepBN BatchNorm statistics of a trained checkpoint.

    python tools/recalibrate_bn.py CONFIG CHECKPOINT --iters N [--out PATH] \
        [--cfg-options KEY=VALUE ...]

Runs N batches of the config's ``train_dataloader`` through the frozen model (RepBN
BatchNorms in train mode with a cumulative average, everything else in eval mode) and
writes ``<checkpoint stem>_bnrecal.pth`` next to the input (or ``--out``). The input
checkpoint is never overwritten. See ``mmslab.prepbn.recalibration``.

For an mmpretrain classifier (configs/cls/) add ``--cfg-options model.train_cfg=None``:
the statistics then see the training pipeline's images without the classifier's batch
mixup / cutmix, as the release's refresh does (docs/classification.md).
"""
import argparse
from typing import List, Optional

from mmengine.config import DictAction

import mmslab  # noqa: F401  (registers the SLAB modules)
from mmslab.prepbn.recalibration import recalibrate_checkpoint
from mmslab.validation import argparse_int, argparse_path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Re-estimate the RepBN BatchNorm statistics of a checkpoint')
    parser.add_argument('config', type=argparse_path,
                        help='config file (mmdet / mmseg / mmpretrain / mmengine)')
    parser.add_argument('checkpoint', type=argparse_path, help='trained checkpoint')
    parser.add_argument('--iters', type=argparse_int(min=1), required=True,
                        help='number of training batches to estimate the statistics on (>= 1)')
    parser.add_argument('--out', type=argparse_path, default=None,
                        help='output checkpoint (default: <checkpoint stem>_bnrecal.pth); '
                        'never CONFIG or CHECKPOINT, written atomically')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, e.g. '
                        'train_dataloader.batch_size=4')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    out = recalibrate_checkpoint(args.config, args.checkpoint, args.iters, args.out,
                                 args.cfg_options)
    print(out)


if __name__ == '__main__':
    main()
