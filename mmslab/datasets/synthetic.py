"""Deterministic synthetic data sets in the on-disk layouts of COCO and ADE20K.

There is no COCO or ADE20K on an offline machine, so the demos and tests train and
evaluate on small generated sets that mmdet's ``CocoDataset`` and mmseg's
``ADE20KDataset`` / ``BaseSegDataset`` read unchanged:

* :func:`make_coco_instances` writes an instance-segmentation set::

      <root>/annotations/instances_train2017.json
      <root>/annotations/instances_val2017.json
      <root>/train2017/000000000001.jpg ...
      <root>/val2017/000000000001.jpg ...

  Every image shows 1-``max_objects`` filled shapes (:data:`SHAPE_CLASSES`) of varied
  size, rotation and shade on a smooth textured background. Shapes are painted in
  order, so later ones occlude earlier ones; the annotation of an occluded object is
  its *visible* part (polygon, bbox and area), as in COCO. Placements that would leave
  an object less than ``min_visible`` visible, split into pieces or with a hole (which
  COCO polygons cannot express) are re-drawn.

* :func:`make_ade_semantic` writes a semantic-segmentation set in ADE20K's layout::

      <root>/images/training/*.jpg        <root>/annotations/training/*.png
      <root>/images/validation/*.jpg      <root>/annotations/validation/*.png

  with ADE's label convention: a stored 0 means "other / not labelled" (here: thin
  clutter strokes drawn over the scene) and class ``k`` of :data:`ADE_CLASSES` is
  stored as ``k + 1``, so ``reduce_zero_label=True`` (fixed in ``ADE20KDataset``) maps
  0 to the ignore index 255 and ``k + 1`` back to ``k``.

Both are seeded: the same arguments write byte-identical files.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: Shape classes of the instance set (COCO category ids are index + 1).
SHAPE_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star')
#: Classes of the semantic set; class k is stored as k + 1 (0 = "other").
ADE_CLASSES: Tuple[str, ...] = ('background', ) + SHAPE_CLASSES

#: Base colour (RGB) of each shape class when ``class_colours=True``.
CLASS_RGB: Dict[str, Tuple[int, int, int]] = {
    'circle': (220, 50, 40),
    'square': (40, 190, 60),
    'triangle': (40, 80, 225),
    'star': (235, 205, 30),
}
#: Palettes (RGB) for visualisation, one colour per class.
COCO_PALETTE: List[Tuple[int, int, int]] = [CLASS_RGB[c] for c in SHAPE_CLASSES]
ADE_PALETTE: List[Tuple[int, int, int]] = [(120, 120, 120)] + COCO_PALETTE

_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_SPLIT_IDS = {'train': 0, 'val': 1, 'training': 0, 'validation': 1}


# --------------------------------------------------------------------------- shapes
def shape_polygon(cls_name: str, cx: float, cy: float, size: float,
                  angle: float) -> np.ndarray:
    """Vertices (K, 2) float64 of a shape whose circumscribed circle has diameter
    ``size``, centred at (cx, cy), rotated by ``angle`` radians."""
    r = size / 2.0
    if cls_name == 'circle':
        t = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
        radii = np.full_like(t, r)
    elif cls_name == 'square':
        t = np.arange(4) * (np.pi / 2) + np.pi / 4
        radii = np.full_like(t, r)
    elif cls_name == 'triangle':
        t = np.arange(3) * (2 * np.pi / 3) - np.pi / 2
        radii = np.full_like(t, r)
    elif cls_name == 'star':
        t = np.arange(10) * (np.pi / 5) - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        raise ValueError(f'unknown shape class {cls_name!r}')
    t = t + angle
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def rasterize(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centres lie inside ``poly``."""
    mask = np.zeros((height, width), np.uint8)
    # pixel (i, j) has its centre at (j + 0.5, i + 0.5) in polygon coordinates
    pts = np.round((poly - 0.5) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons (``[[x0, y0, x1, y1, ...], ...]``) of a hole-free binary mask.

    The outline runs along pixel *edges* (pixel (i, j) covers [j, j+1] x [i, i+1]),
    traced on a 2x up-sampled mask, so pycocotools rasterises it back to the same
    pixels up to the corners of the boundary staircase.
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2,
                    interpolation=cv2.INTER_NEAREST)
    up = np.pad(up, 1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64) - 1.0  # undo the padding
        # boundary pixels of the up-sampled mask -> edges of the original pixels:
        # an up-sampled pixel index u covers original coordinate [u/2, (u+1)/2];
        # move every contour point half an up-sampled pixel outwards by taking the
        # nearest original pixel edge.
        c = np.round((c + 0.5) / 2.0)
        # drop consecutive duplicates created by the rounding
        keep = np.ones(len(c), bool)
        keep[1:] = np.any(c[1:] != c[:-1], axis=1)
        if len(c) > 1 and np.all(c[0] == c[-1]):
            keep[-1] = False
        c = c[keep]
        if len(c) >= 3:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def _has_hole_or_split(mask: np.ndarray) -> bool:
    m = mask.astype(np.uint8)
    n_labels, _ = cv2.connectedComponents(m, connectivity=8)
    if n_labels != 2:  # background + exactly one component
        return True
    # holes: background components not connected to the border
    inv = np.pad(1 - m, 1, constant_values=1)
    n_bg, _ = cv2.connectedComponents(inv, connectivity=4)
    return n_bg != 2


# --------------------------------------------------------------------------- scenes
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, smoothly textured background (float32 RGB, H x W x 3)."""
    grey = rng.uniform(85, 165)
    base = grey + rng.uniform(-12, 12, size=3)
    low = rng.normal(0, 1, size=(6, 6, 3)).astype(np.float32)
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    mid = rng.normal(0, 1, size=(24, 24, 1)).astype(np.float32)
    mid = cv2.resize(mid, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    img = base[None, None, :] + 14 * low + 6 * mid
    return img.astype(np.float32)


def _instance_colour(rng: np.random.Generator, cls_name: str,
                     class_colours: bool) -> np.ndarray:
    if class_colours:
        c = np.array(CLASS_RGB[cls_name], np.float64)
        c = c * rng.uniform(0.8, 1.08) + rng.uniform(-18, 18, size=3)
    else:
        c = rng.uniform(20, 235, size=3)
    return np.clip(c, 0, 255)


def _random_scene(rng: np.random.Generator, image_size: int, max_objects: int,
                  size_range: Tuple[float, float], min_visible: float,
                  classes: Sequence[str], class_colours: bool,
                  max_tries: int = 60):
    """Draw one scene. Returns (float RGB image, objects) where each object is a
    dict(cls=int, full=bool mask, visible=bool mask), in painting order."""
    h = w = image_size
    img = _background(rng, h, w)
    objects: List[dict] = []
    n_obj = int(rng.integers(1, max_objects + 1))
    for _ in range(n_obj):
        for _try in range(max_tries):
            cls = int(rng.integers(len(classes)))
            size = float(rng.uniform(*size_range))
            r = size / 2
            cx = float(rng.uniform(r, w - r))
            cy = float(rng.uniform(r, h - r))
            angle = float(rng.uniform(0, 2 * np.pi))
            poly = shape_polygon(classes[cls], cx, cy, size, angle)
            full = rasterize(poly, h, w)
            if full.sum() < 16:
                continue
            ok = True
            new_visible = []
            for o in objects:
                vis = o['visible'] & ~full
                if (vis.sum() < min_visible * o['full'].sum()
                        or _has_hole_or_split(vis)):
                    ok = False
                    break
                new_visible.append(vis)
            if not ok:
                continue
            for o, vis in zip(objects, new_visible):
                o['visible'] = vis
            objects.append(dict(cls=cls, full=full, visible=full.copy()))
            # paint: flat colour with a gentle linear shading across the object
            colour = _instance_colour(rng, classes[cls], class_colours)
            ys, xs = np.nonzero(full)
            g = rng.uniform(-1, 1, size=2)
            shade = ((xs - cx) * g[0] + (ys - cy) * g[1]) / max(r, 1.0) * 12.0
            img[ys, xs] = colour[None, :] + shade[:, None]
            break
    img += rng.normal(0, 3.0, size=img.shape).astype(np.float32)
    return img, objects


def _to_uint8_bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(np.round(img), 0, 255).astype(np.uint8),
                        cv2.COLOR_RGB2BGR)


def _imwrite(path: str, img: np.ndarray) -> None:
    ext = osp.splitext(path)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in ('.jpg', '.jpeg') else []
    if not cv2.imwrite(path, img, params):
        raise OSError(f'could not write {path}')


def _defaults(image_size: int, size_range: Optional[Tuple[float, float]]):
    if size_range is None:
        # 20-120 px objects on a 256 px image
        size_range = (image_size * 20 / 256, image_size * 120 / 256)
    return tuple(float(s) for s in size_range)


# --------------------------------------------------------------------------- COCO
def make_coco_instances(root: str,
                        num_train: int = 200,
                        num_val: int = 50,
                        image_size: int = 256,
                        seed: int = 0,
                        max_objects: int = 5,
                        size_range: Optional[Tuple[float, float]] = None,
                        min_visible: float = 0.5,
                        class_colours: bool = True,
                        img_ext: str = '.jpg') -> Dict[str, str]:
    """Write a COCO-format instance-segmentation set to ``root``.

    Args:
        root: output directory (created; existing files of the same names are
            overwritten).
        num_train, num_val: number of images in ``train2017`` / ``val2017``.
        image_size: square image side in pixels.
        seed: random seed; the same arguments give byte-identical files.
        max_objects: each image holds 1..max_objects shapes.
        size_range: (min, max) circumscribed diameter of a shape in pixels
            (default 20-120 px scaled to ``image_size`` / 256).
        min_visible: an object is never occluded below this visible fraction.
        class_colours: colour each class with its own (jittered) hue, as in
            :data:`CLASS_RGB`; False draws random colours (shape is the only cue).
        img_ext: '.jpg' or '.png'.

    Returns:
        dict with the annotation file of each split ('train', 'val').
    """
    size_range = _defaults(image_size, size_range)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [
        dict(id=i + 1, name=c, supercategory='shape')
        for i, c in enumerate(SHAPE_CLASSES)
    ]
    out = {}
    for split, num in (('train', num_train), ('val', num_val)):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        for i in range(num):
            img_id = i + 1
            img, objects = _random_scene(rng, image_size, max_objects, size_range,
                                         min_visible, SHAPE_CLASSES, class_colours)
            file_name = f'{img_id:012d}{img_ext}'
            _imwrite(osp.join(img_dir, file_name), _to_uint8_bgr(img))
            images.append(
                dict(id=img_id, file_name=file_name, height=image_size,
                     width=image_size))
            for o in objects:
                vis = o['visible']
                ys, xs = np.nonzero(vis)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                annotations.append(
                    dict(
                        id=len(annotations) + 1,
                        image_id=img_id,
                        category_id=o['cls'] + 1,
                        segmentation=mask_to_polygons(vis),
                        area=float(vis.sum()),
                        bbox=[float(x0), float(y0), float(x1 - x0),
                              float(y1 - y0)],
                        iscrowd=0))
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        with open(ann_file, 'w') as f:
            json.dump(
                dict(
                    info=dict(description='mmslab synthetic shapes (seed '
                              f'{seed})', version='1.0'),
                    licenses=[],
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
        out[split] = ann_file
    return out


# --------------------------------------------------------------------------- ADE
def make_ade_semantic(root: str,
                      num_train: int = 200,
                      num_val: int = 50,
                      image_size: int = 256,
                      seed: int = 0,
                      max_objects: int = 5,
                      size_range: Optional[Tuple[float, float]] = None,
                      class_colours: bool = True,
                      max_clutter: int = 3) -> Dict[str, str]:
    """Write an ADE20K-layout semantic-segmentation set to ``root``.

    Label maps (PNG, uint8) store class ``k`` of :data:`ADE_CLASSES` as ``k + 1``;
    0 marks "other" pixels (0-``max_clutter`` thin grey strokes drawn over the scene),
    which ``reduce_zero_label=True`` turns into the ignore index.

    Returns:
        dict with the image directory of each split ('training', 'validation').
    """
    size_range = _defaults(image_size, size_range)
    out = {}
    for split, num in (('training', num_train), ('validation', num_val)):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], 7])
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(num):
            img, objects = _random_scene(rng, image_size, max_objects, size_range,
                                         0.3, SHAPE_CLASSES, class_colours)
            label = np.ones((image_size, image_size), np.uint8)  # background = 1
            for o in objects:  # painting order = occlusion order
                label[o['full']] = o['cls'] + 2  # shape class k -> ADE index k+1
            for _ in range(int(rng.integers(0, max_clutter + 1))):
                pts = rng.uniform(0, image_size, size=(int(rng.integers(3, 6)), 2))
                pts = np.round(pts).astype(np.int32)
                thickness = int(rng.integers(2, 5))
                stroke = np.zeros_like(label)
                cv2.polylines(stroke, [pts], False, 1, thickness=thickness)
                grey = float(rng.uniform(30, 90))
                img[stroke.astype(bool)] = grey
                label[stroke.astype(bool)] = 0  # "other"
            name = f'ADE_synth_{split}_{i + 1:08d}'
            _imwrite(osp.join(img_dir, name + '.jpg'), _to_uint8_bgr(img))
            _imwrite(osp.join(ann_dir, name + '.png'), label)
        out[split] = img_dir
    return out
