"""Fold the norms of a trained SLAB detector / segmentor for fast inference.

    python tools/deploy.py CONFIG CHECKPOINT OUT [--shape 256 320] [--cfg-options ...]

Checks that the folded model's features equal the trained model's on a random image
before saving OUT and OUT's config (``<out stem>_config.py``, with ``backbone.deploy=True``).
"""
import argparse

from mmengine.config import DictAction

from mmslab.models.reparameterize import deploy_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='trained checkpoint (kept untouched)')
    parser.add_argument('out', help='where to write the folded checkpoint')
    parser.add_argument('--shape', type=int, nargs=2, default=(256, 320), metavar=('H', 'W'),
                        help='random test image size for the equality check')
    parser.add_argument('--rtol', type=float, default=1e-4)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    err = deploy_checkpoint(args.config, args.checkpoint, args.out, tuple(args.shape),
                            args.rtol, args.cfg_options)
    print(f'folded checkpoint saved to {args.out} (feature relative difference {err:.2e})')


if __name__ == '__main__':
    main()
