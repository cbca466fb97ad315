"""Synthetic data sets in COCO / ADE20K layouts (see :mod:`mmslab.datasets.synthetic`)."""
from .synthetic import (ADE_CLASSES, ADE_PALETTE, COCO_PALETTE, SHAPE_CLASSES,
                        make_ade_semantic, make_coco_instances)

__all__ = [
    'ADE_CLASSES', 'ADE_PALETTE', 'COCO_PALETTE', 'SHAPE_CLASSES',
    'make_ade_semantic', 'make_coco_instances'
]
