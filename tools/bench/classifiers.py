"""Whole ImageNet classifiers as benchmarked models: mmpretrain ``ImageClassifier``s
(backbone + ``GlobalAveragePooling`` neck + ``LinearClsHead``, 1000 classes), each built
from its config's ``model`` dict:

* ``swin_t_cls``: mmpretrain's own Swin-T classifier,
  ``mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py`` (``SwinTransformer(arch='tiny',
  img_size=224, drop_path_rate=0.2)``);
* ``slab_swin_t_cls``: ``configs/cls/slab_swin_tiny.py`` (``SLABSwin`` with
  ``final_norm=True, clamp_windows=True``);
* ``slab_pvt_t_cls``: ``configs/cls/slab_pvt_tiny.py`` (``SLABPVT``). mmpretrain 1.2 has
  no PVT classifier (its Twins-PCPVT is another architecture), so SLAB-PVT-T's classifier
  is compared with mmpretrain's Swin-T classifier too.

The benchmark calls a model with the image batch alone; :class:`ClassifierOnImages` makes
that call the classifier's:

* eval: ``classifier(x, mode='tensor')``, the logits (B, 1000) -- what ``predict`` computes
  before its softmax;
* train: ``classifier(x, samples, mode='loss')``, the config's head loss
  (``LabelSmoothLoss(0.1)`` in all three) on fixed random labels (seed 0), returned as a
  tuple of the loss terms; the benchmark's step sums them and calls backward, then
  :meth:`ClassifierOnImages.optimizer_step`: the config's optimizer (AdamW with its
  parameter-wise decay settings, built by mmengine's ``build_optim_wrapper``) and its
  gradient clipping (both Swins: max norm 5.0; SLAB-PVT: none). The data preprocessor and
  its batch augments (Mixup / CutMix) are not part of the timed step: the input is the
  benchmark's random tensor, already normalised.
"""
import copy
import logging
import os.path as osp
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS: Dict[str, str] = {
    'swin_t_cls': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
    'slab_swin_t_cls': osp.join(ROOT, 'configs', 'cls', 'slab_swin_tiny.py'),
    'slab_pvt_t_cls': osp.join(ROOT, 'configs', 'cls', 'slab_pvt_tiny.py'),
}
_SWIN_MINI = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])
#: mini forms (smoke tests): the backbone rows' mini widths (Swin: one block per stage but
#: two in stage 3, which holds the shifted-window block of SLAB-Swin's classification
#: windows at 224), the head's input width to match; 1000 classes as in the full models.
#: mmpretrain's Swin refuses a stage map smaller than its window unless
#: ``pad_small_map=True`` (then padded, as in mmdet's Swin): set in the mini, so that it
#: runs on the smoke tests' small images too (at 224 no map is smaller than the window
#: and the option changes nothing)
MINI: Dict[str, Tuple[Dict[str, Any], int]] = {
    'swin_t_cls': (dict(arch=_SWIN_MINI, pad_small_map=True), 128),
    'slab_swin_t_cls': (dict(_SWIN_MINI), 128),
    'slab_pvt_t_cls': (dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1]), 64),
}
#: seed of the random labels of the training step
LABEL_SEED = 0


def config_path(name: str) -> str:
    """The config file of ``name`` (``mmpretrain::<path>``: in the installed mmpretrain's
    ``.mim/configs``)."""
    path = CONFIGS[name]
    package, sep, rel = path.partition('::')
    if not sep:
        return path
    from mmengine.utils import get_installed_path
    return osp.join(get_installed_path(package), '.mim', 'configs', rel)


@contextmanager
def _quiet():
    """mmengine's logger at WARNING (not its INFO line per parameter of the init and
    optimizer reports)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@lru_cache(maxsize=None)
def _config(name: str) -> Any:
    """The config of ``name``, read once (an ``mmengine.config.Config``; callers copy)."""
    from mmengine.config import Config
    return Config.fromfile(config_path(name))


def classifier_config(name: str, mini: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The ``model`` and ``optim_wrapper`` dicts of ``name``'s config (copies; ``mini``:
    the backbone narrowed to :data:`MINI`)."""
    config = _config(name)
    model = copy.deepcopy(config.model.to_dict())
    if mini:
        backbone, channels = MINI[name]
        model['backbone'].update(copy.deepcopy(backbone))
        model['head']['in_channels'] = channels
    return model, copy.deepcopy(config.optim_wrapper.to_dict())


class ClassifierOnImages(nn.Module):
    """An ``ImageClassifier`` called as the benchmark calls its models, ``model(x)``:
    eval -> the logits; train -> the loss terms of the config's head on fixed random labels
    (a tuple of scalars). :meth:`optimizer_step` is the rest of a training step (the
    benchmark calls it after backward)."""

    def __init__(self, classifier: nn.Module, optim_wrapper: Dict[str, Any]) -> None:
        super().__init__()
        self.classifier = classifier
        self.optim_wrapper_cfg = optim_wrapper
        self._optim = None  # built at the first step, on the device the model is on then
        self._samples: Dict[int, list] = {}

    def samples(self, batch: int) -> list:
        """``batch`` data samples with random ground-truth labels (seed
        :data:`LABEL_SEED`, made once per batch size)."""
        if batch not in self._samples:
            from mmpretrain.structures import DataSample
            gen = torch.Generator().manual_seed(LABEL_SEED)
            labels = torch.randint(self.classifier.head.num_classes, (batch, ), generator=gen)
            self._samples[batch] = [DataSample().set_gt_label(int(c)) for c in labels]
        return self._samples[batch]

    def forward(self, x: torch.Tensor) -> Any:
        if not self.training:
            return self.classifier(x, mode='tensor')
        losses = self.classifier(x, self.samples(x.shape[0]), mode='loss')
        return tuple(losses.values())

    def optimizer(self) -> torch.optim.Optimizer:
        if self._optim is None:
            from mmengine.optim import build_optim_wrapper
            with _quiet():
                self._optim = build_optim_wrapper(self.classifier,
                                                  copy.deepcopy(self.optim_wrapper_cfg))
        return self._optim.optimizer

    def optimizer_step(self, scaler: Optional[torch.amp.GradScaler] = None) -> None:
        """The config's gradient clipping (if any) and optimizer step, after backward
        (``scaler``: the float16 step's ``GradScaler``, which unscales first and skips
        a step with inf / NaN gradients)."""
        optimizer = self.optimizer()
        clip = dict(self.optim_wrapper_cfg.get('clip_grad') or {})
        if clip:
            if clip.pop('type', 'norm') != 'norm':
                raise ValueError(f'only norm gradient clipping is benchmarked, got {clip}')
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g['params']
                      if p.grad is not None]
            nn.utils.clip_grad_norm_(params, **clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


def build_classifier(name: str, mini: bool = False) -> ClassifierOnImages:
    """The classifier ``name`` (a key of :data:`CONFIGS`) from its config, initialised by
    its own ``init_weights`` (the configs' ``TruncNormal`` heads), in eval mode."""
    import mmpretrain.models  # noqa: F401  (registers mmpretrain's modules)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    model_cfg, optim_cfg = classifier_config(name, mini)
    with _quiet():
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            classifier = MODELS.build(model_cfg)
        classifier.init_weights()
    return ClassifierOnImages(classifier, optim_cfg).eval()
