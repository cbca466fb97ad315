"""Fold the norms of a trained SLAB detector / segmentor for fast inference.

    python tools/deploy.py CONFIG CHECKPOINT OUT [--shape 256 320] [--cfg-options ...]

Checks that the folded model's features equal the trained model's on a random image
before saving OUT and OUT's config (``<out stem>_config.py``, with ``backbone.deploy=True``).
Neither output may be (or resolve to) CONFIG or CHECKPOINT; both are written atomically.
"""
import argparse
from typing import List, Optional

from mmengine.config import DictAction

from mmslab.deploy import deploy_checkpoint
from mmslab.validation import argparse_float, argparse_int, argparse_path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=argparse_path)
    parser.add_argument('checkpoint', type=argparse_path,
                        help='trained checkpoint (kept untouched)')
    parser.add_argument('out', type=argparse_path,
                        help='where to write the folded checkpoint')
    parser.add_argument('--shape', type=argparse_int(min=1), nargs=2, default=(256, 320),
                        metavar=('H', 'W'),
                        help='random test image size for the equality check (pixels >= 1)')
    parser.add_argument('--rtol', type=argparse_float(min=0, min_open=True), default=1e-4,
                        help='largest accepted relative feature difference (> 0)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    err = deploy_checkpoint(args.config, args.checkpoint, args.out, tuple(args.shape),
                            args.rtol, args.cfg_options)
    print(f'folded checkpoint saved to {args.out} (feature relative difference {err:.2e})')


if __name__ == '__main__':
    main()
