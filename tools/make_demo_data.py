#!/usr/bin/env python
"""Write the synthetic demo data sets (see mmslab/datasets/synthetic.py).

    python tools/make_demo_data.py                      # both sets, default sizes
    python tools/make_demo_data.py --only coco --num-train 400

Defaults match the demo configs: data/demo_coco/ (COCO instance layout) and
data/demo_ade/ (ADE20K semantic layout), 256 px images, seed 0.
"""
import argparse
import os.path as osp
import sys
import time

try:
    from mmslab.datasets import make_ade_semantic, make_coco_instances
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from mmslab.datasets import make_ade_semantic, make_coco_instances
from mmslab.validation import argparse_int  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--coco-root', default='data/demo_coco')
    p.add_argument('--ade-root', default='data/demo_ade')
    p.add_argument('--only', choices=['coco', 'ade'], default=None,
                   help='write only one of the two sets')
    p.add_argument('--num-train', type=argparse_int(min=0), default=None,
                   help='training images (default: 400 coco, 200 ade)')
    p.add_argument('--num-val', type=argparse_int(min=0), default=50)
    p.add_argument('--image-size', type=argparse_int(min=1), default=256,
                   help='square image side in pixels')
    p.add_argument('--max-objects', type=argparse_int(min=1), default=5)
    p.add_argument('--seed', type=argparse_int(min=0), default=0)
    p.add_argument('--img-ext', default='.png', choices=['.png', '.jpg'],
                   help='image format of the COCO set (PNG: lossless, and mmdet '
                   "`test --show-dir` then draws PNGs)")
    p.add_argument('--random-colours', action='store_true',
                   help='random colour per object instead of one hue per class')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common = dict(num_val=args.num_val, image_size=args.image_size, seed=args.seed,
                  max_objects=args.max_objects,
                  class_colours=not args.random_colours)
    if args.only in (None, 'coco'):
        t = time.time()
        n = 400 if args.num_train is None else args.num_train
        files = make_coco_instances(args.coco_root, num_train=n,
                                    img_ext=args.img_ext, **common)
        print(f'COCO instances: {n} train / {args.num_val} val images in '
              f'{args.coco_root} ({time.time() - t:.1f} s): '
              + ', '.join(files.values()))
    if args.only in (None, 'ade'):
        t = time.time()
        n = 200 if args.num_train is None else args.num_train
        make_ade_semantic(args.ade_root, num_train=n, **common)
        print(f'ADE semantic: {n} training / {args.num_val} validation images in '
              f'{args.ade_root} ({time.time() - t:.1f} s)')


if __name__ == '__main__':
    main()
