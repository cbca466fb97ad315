#!/usr/bin/env python
"""Write the synthetic demo data sets (see mmslab/datasets/synthetic.py and
mmslab/datasets/imagenet_synthetic.py).

    python tools/make_demo_data.py                      # COCO and ADE sets, default sizes
    python tools/make_demo_data.py --only coco --num-train 400
    python tools/make_demo_data.py --only imagenet --num-classes 8 --num-train 200

Defaults match the demo configs: data/demo_coco/ (COCO instance layout) and
data/demo_ade/ (ADE20K semantic layout), 256 px images, seed 0. ``--only imagenet`` writes
data/demo_imagenet/ (ImageNet layout, what mmpretrain's ``ImageNet(data_root, split=...)``
reads: train/ and val/ class folders, meta/train.txt and meta/val.txt), 64 px images,
``--num-train`` / ``--num-val`` images per class.
"""
import argparse
import os.path as osp
import sys
import time

try:
    from mmslab.datasets import (CLS_CLASSES, make_ade_semantic, make_coco_instances,
                                 make_imagenet_folders)
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from mmslab.datasets import (CLS_CLASSES, make_ade_semantic, make_coco_instances,
                                 make_imagenet_folders)
from mmslab.validation import argparse_int  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--coco-root', default='data/demo_coco')
    p.add_argument('--ade-root', default='data/demo_ade')
    p.add_argument('--imagenet-root', default='data/demo_imagenet')
    p.add_argument('--only', choices=['coco', 'ade', 'imagenet'], default=None,
                   help='write only one set (default: the COCO and ADE sets; the ImageNet '
                   'set only when named here)')
    p.add_argument('--num-train', type=argparse_int(min=0), default=None,
                   help='training images (default: 400 coco, 200 ade, 100 per class '
                   'imagenet)')
    p.add_argument('--num-val', type=argparse_int(min=0), default=None,
                   help='validation images (default: 50; imagenet: 25 per class)')
    p.add_argument('--image-size', type=argparse_int(min=1), default=None,
                   help='square image side in pixels (default: 256; imagenet: 64)')
    p.add_argument('--num-classes', type=argparse_int(min=1, max=len(CLS_CLASSES)),
                   default=4, help='classes of the imagenet set (the first of '
                   f'{", ".join(CLS_CLASSES)})')
    p.add_argument('--max-objects', type=argparse_int(min=1), default=5)
    p.add_argument('--seed', type=argparse_int(min=0), default=0)
    p.add_argument('--img-ext', default='.png', choices=['.png', '.jpg'],
                   help='image format of the COCO set (PNG: lossless, and mmdet '
                   "`test --show-dir` then draws PNGs)")
    p.add_argument('--random-colours', action='store_true',
                   help='random colour per object instead of one hue per class')
    args = p.parse_args(argv)
    if args.only == 'imagenet' and args.image_size is not None and args.image_size < 8:
        p.error(f'argument --image-size: must be >= 8 for the imagenet set, got '
                f'{args.image_size}')
    return args


def main(argv=None):
    args = parse_args(argv)
    num_val = 50 if args.num_val is None else args.num_val
    common = dict(num_val=num_val, image_size=args.image_size or 256, seed=args.seed,
                  max_objects=args.max_objects,
                  class_colours=not args.random_colours)
    if args.only in (None, 'coco'):
        t = time.time()
        n = 400 if args.num_train is None else args.num_train
        files = make_coco_instances(args.coco_root, num_train=n,
                                    img_ext=args.img_ext, **common)
        print(f'COCO instances: {n} train / {num_val} val images in '
              f'{args.coco_root} ({time.time() - t:.1f} s): '
              + ', '.join(files.values()))
    if args.only in (None, 'ade'):
        t = time.time()
        n = 200 if args.num_train is None else args.num_train
        make_ade_semantic(args.ade_root, num_train=n, **common)
        print(f'ADE semantic: {n} training / {num_val} validation images in '
              f'{args.ade_root} ({time.time() - t:.1f} s)')
    if args.only == 'imagenet':
        t = time.time()
        n = 100 if args.num_train is None else args.num_train
        v = 25 if args.num_val is None else args.num_val
        files = make_imagenet_folders(args.imagenet_root, num_classes=args.num_classes,
                                      train_per_class=n, val_per_class=v,
                                      image_size=args.image_size or 64, seed=args.seed,
                                      class_colours=not args.random_colours)
        print(f'ImageNet layout: {args.num_classes} classes, {n} train / {v} val images per '
              f'class in {args.imagenet_root} ({time.time() - t:.1f} s): '
              + ', '.join(files.values()))


if __name__ == '__main__':
    main()
