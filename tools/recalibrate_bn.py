"""Re-estimate the RepBN/PRepBN BatchNorm statistics of a trained checkpoint.

    python tools/recalibrate_bn.py CONFIG CHECKPOINT --iters N [--out PATH] \
        [--cfg-options KEY=VALUE ...]

Runs N batches of the config's ``train_dataloader`` through the frozen model (RepBN
BatchNorms in train mode with a cumulative average, everything else in eval mode) and
writes ``<checkpoint stem>_bnrecal.pth`` next to the input (or ``--out``). The input
checkpoint is never overwritten. See ``mmslab.bn_recalibration``.
"""
import argparse

from mmengine.config import DictAction

import mmslab  # noqa: F401  (registers the SLAB modules)
from mmslab.bn_recalibration import recalibrate_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Re-estimate the RepBN BatchNorm statistics of a checkpoint')
    parser.add_argument('config', help='config file (mmdet / mmseg / mmengine)')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--iters', type=int, required=True,
                        help='number of training batches to estimate the statistics on')
    parser.add_argument('--out', default=None,
                        help='output checkpoint (default: <checkpoint stem>_bnrecal.pth)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, e.g. '
                        'train_dataloader.batch_size=4')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = recalibrate_checkpoint(args.config, args.checkpoint, args.iters, args.out,
                                 args.cfg_options)
    print(out)


if __name__ == '__main__':
    main()
