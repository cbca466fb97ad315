"""Synthetic data sets in COCO / ADE20K / ImageNet layouts (see
:mod:`mmslab.datasets.synthetic` and :mod:`mmslab.datasets.imagenet_synthetic`)."""
from .imagenet_synthetic import (CLS_CLASSES, imagenet_classes, make_imagenet_folders)
from .synthetic import (ADE_CLASSES, ADE_PALETTE, COCO_PALETTE, SHAPE_CLASSES,
                        make_ade_semantic, make_coco_instances)

__all__ = [
    'ADE_CLASSES', 'ADE_PALETTE', 'CLS_CLASSES', 'COCO_PALETTE', 'SHAPE_CLASSES',
    'imagenet_classes', 'make_ade_semantic', 'make_coco_instances', 'make_imagenet_folders'
]
