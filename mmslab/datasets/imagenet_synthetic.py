"""A deterministic synthetic classification set in ImageNet's on-disk layout.

:func:`make_imagenet_folders` writes what mmpretrain's ``ImageNet(data_root, split=...)``
and ``CustomDataset(data_root, ann_file='meta/val.txt', data_prefix='val')`` read::

    <root>/train/<class>/<class>_00000.JPEG ...
    <root>/val/<class>/<class>_00000.JPEG ...
    <root>/meta/train.txt        # '<class>/<class>_00000.JPEG <label>' per line
    <root>/meta/val.txt

Every image shows one filled shape of its class (:data:`CLS_CLASSES`: the shape classes
of :mod:`mmslab.datasets.synthetic` and four more) on the same smoothly textured
background as the detection / segmentation sets, with varied size, position, rotation and
shade, and by default in its class's own (jittered) hue, so a small classifier learns the
classes in a few hundred iterations. Every class has the same number of images per split.
Labels follow the sorted class names, as ImageNet's follow its sorted folder names: the
ann files and ``CustomDataset``'s folder mode (no ``ann_file``) give the same labels.
Seeded: the same arguments write byte-identical files.
"""
import os
import os.path as osp
from typing import Dict, Optional, Tuple

import numpy as np

from ..validation import check_choice, check_float_seq, check_int
from .synthetic import (CLASS_RGB, SHAPE_CLASSES, _background, _imwrite, _to_uint8_bgr,
                        rasterize, shape_polygon)

#: Shapes of the classification set; ``num_classes=k`` takes the first k (labelled in
#: sorted order: :func:`imagenet_classes`).
CLS_CLASSES: Tuple[str, ...] = SHAPE_CLASSES + ('pentagon', 'cross', 'diamond', 'hexagon')
#: Base colour (RGB) of each class when ``class_colours=True``.
CLS_RGB: Dict[str, Tuple[int, int, int]] = dict(
    CLASS_RGB, pentagon=(230, 100, 190), cross=(240, 140, 30), diamond=(120, 60, 20),
    hexagon=(40, 200, 210))

_SPLITS = {'train': 0, 'val': 1}


def cls_polygon(cls_name: str, cx: float, cy: float, size: float,
                angle: float) -> np.ndarray:
    """Vertices (K, 2) float64 of a shape of :data:`CLS_CLASSES` whose circumscribed
    circle has diameter ``size``, centred at (cx, cy), rotated by ``angle`` radians."""
    if cls_name in SHAPE_CLASSES:
        return shape_polygon(cls_name, cx, cy, size, angle)
    r = size / 2.0
    if cls_name in ('pentagon', 'hexagon'):
        n = 5 if cls_name == 'pentagon' else 6
        t = np.arange(n) * (2 * np.pi / n) - np.pi / 2
        radii = np.full_like(t, r)
    elif cls_name == 'diamond':  # a rhombus, its diagonals 1 : 0.55
        t = np.arange(4) * (np.pi / 2)
        radii = np.where(np.arange(4) % 2 == 0, r, 0.55 * r)
    elif cls_name == 'cross':  # a plus sign, arms 0.36 of the size wide
        a = 0.18 * size
        pts = np.array([(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r),
                        (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)], np.float64)
        radii, t = np.hypot(pts[:, 0], pts[:, 1]), np.arctan2(pts[:, 1], pts[:, 0])
    else:
        raise ValueError(f'unknown shape class {cls_name!r} (one of {CLS_CLASSES})')
    t = t + angle
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def _shape_image(rng: np.random.Generator, cls_name: str, image_size: int,
                 size_range: Tuple[float, float],
                 class_colours: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Float RGB image (H x W x 3) of one shape of ``cls_name`` on the background, and the
    shape's boolean mask."""
    h = w = image_size
    img = _background(rng, h, w)
    size = float(rng.uniform(*size_range)) * image_size
    r = size / 2
    cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
    full = rasterize(cls_polygon(cls_name, cx, cy, size, float(rng.uniform(0, 2 * np.pi))),
                     h, w)
    if class_colours:
        colour = np.array(CLS_RGB[cls_name], np.float64)
        colour = colour * rng.uniform(0.8, 1.08) + rng.uniform(-18, 18, size=3)
    else:
        colour = rng.uniform(20, 235, size=3)
    colour = np.clip(colour, 0, 255)
    ys, xs = np.nonzero(full)
    g = rng.uniform(-1, 1, size=2)  # a gentle linear shading across the shape
    shade = ((xs - cx) * g[0] + (ys - cy) * g[1]) / max(r, 1.0) * 12.0
    img[ys, xs] = colour[None, :] + shade[:, None]
    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    return img, full


def imagenet_classes(num_classes: Optional[int] = None) -> Tuple[str, ...]:
    """The class names of a :func:`make_imagenet_folders` set of ``num_classes`` classes
    (all of :data:`CLS_CLASSES` for None) in label order: sorted, as the folder names."""
    return tuple(sorted(CLS_CLASSES[:num_classes]))


def make_imagenet_folders(root: str,
                          num_classes: int = 4,
                          train_per_class: int = 100,
                          val_per_class: int = 25,
                          image_size: int = 64,
                          seed: int = 0,
                          size_range: Tuple[float, float] = (0.45, 0.95),
                          class_colours: bool = True,
                          img_ext: str = '.JPEG') -> Dict[str, str]:
    """Write an ImageNet-layout classification set to ``root``.

    Args:
        root: output directory (created; existing files of the same names are
            overwritten).
        num_classes: the first ``num_classes`` of :data:`CLS_CLASSES` (1-8), labelled in
            sorted order (:func:`imagenet_classes`).
        train_per_class, val_per_class: images of each class in ``train`` / ``val``.
        image_size: square image side in pixels (>= 8).
        seed: random seed; the same arguments give byte-identical files.
        size_range: (min, max) circumscribed diameter of the shape as a fraction of
            ``image_size``, within (0, 1].
        class_colours: colour each class with its own (jittered) hue, as in
            :data:`CLS_RGB`; False draws random colours (shape is the only cue).
        img_ext: '.JPEG' (ImageNet's), '.jpg' or '.png'.

    Returns:
        dict with the annotation file of each split ('train', 'val'):
        ``<root>/meta/<split>.txt``, one ``<class>/<file> <label>`` line per image, paths
        relative to ``<root>/<split>``.
    """
    name = 'make_imagenet_folders'
    num_classes = check_int(name, 'num_classes', num_classes, min=1, max=len(CLS_CLASSES))
    train_per_class = check_int(name, 'train_per_class', train_per_class, min=0)
    val_per_class = check_int(name, 'val_per_class', val_per_class, min=0)
    image_size = check_int(name, 'image_size', image_size, min=8)
    lo, hi = check_float_seq(name, 'size_range', size_range, length=2, min=0, max=1,
                             min_open=True)
    if lo > hi:
        raise ValueError(f'{name}: size_range must be (min, max) with min <= max, got '
                         f'{size_range!r}')
    check_choice(name, 'img_ext', img_ext, ('.JPEG', '.jpeg', '.jpg', '.png'))
    classes = imagenet_classes(num_classes)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    out = {}
    for split, per_class in (('train', train_per_class), ('val', val_per_class)):
        rng = np.random.default_rng([seed, _SPLITS[split], 13])
        lines = {c: [] for c in classes}
        for c in classes:
            os.makedirs(osp.join(root, split, c), exist_ok=True)
        for i in range(per_class):  # classes interleaved: a prefix of the set is balanced
            for label, c in enumerate(classes):
                img, _ = _shape_image(rng, c, image_size, (lo, hi), class_colours)
                rel = f'{c}/{c}_{i:05d}{img_ext}'
                _imwrite(osp.join(root, split, rel), _to_uint8_bgr(img))
                lines[c].append(f'{rel} {label}\n')
        ann_file = osp.join(root, 'meta', f'{split}.txt')
        with open(ann_file, 'w') as f:
            f.writelines(line for c in classes for line in lines[c])
        out[split] = ann_file
    return out
