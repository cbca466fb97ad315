"""The config of one study run: the study's base config (``configs/study/
prepbn_study_base.py``) loaded and changed for a variant, a seed and the run's data,
image size and length, written out as a plain (fully merged) mmengine config."""
import copy
from typing import List

from mmengine.config import Config

from mmslab.config import load_config
from mmslab.fileio import atomic_write_text

from .variants import VARIANTS, custom_hooks

PIPELINES = ('train_pipeline', 'test_pipeline')
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = ('val_evaluator', 'test_evaluator')


def _resize(pipeline: List[dict], image_size: int) -> None:
    for step in pipeline:
        if step.get('type') == 'Resize':
            step['scale'] = (image_size, image_size)


def _set_length(cfg: Config, base: str, iters: int) -> None:
    """The base config's iteration-based schedule (a linear warm-up over a tenth of the
    run, then cosine decay; validation and the checkpoint at the end), for ``iters``."""
    sched = cfg.param_scheduler
    if cfg.train_cfg.get('type') != 'IterBasedTrainLoop' or \
            [s.type for s in sched] != ['LinearLR', 'CosineAnnealingLR']:
        raise ValueError(f'{base}: the study expects an IterBasedTrainLoop and a LinearLR + '
                         f'CosineAnnealingLR param_scheduler, got {cfg.train_cfg.get("type")} '
                         f'and {[s.type for s in sched]}')
    warmup = max(1, iters // 10)
    cfg.max_iters, cfg.warmup = iters, warmup
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    sched[0].end = warmup
    sched[1].update(T_max=iters - warmup, begin=warmup, end=iters)
    cfg.default_hooks.checkpoint.interval = iters


def study_config(base: str, variant: str, seed: int, data_root: str, image_size: int,
                 iters: int, batch_size: int = 4, log_interval: int = 10) -> Config:
    """``base`` with the variant's backbone (merged as a config file would merge it:
    ``_delete_`` replaces) and PRepBN schedule, ``seed``, the data under ``data_root``
    (a folder path ending in '/'), every Resize at ``image_size`` px, ``iters`` training
    iterations (a tenth of them warm-up, then cosine decay; validation and the checkpoint
    at the end) of ``batch_size`` images."""
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}; choose from {sorted(VARIANTS)}')
    cfg = load_config(base)
    v = VARIANTS[variant]
    backbone = copy.deepcopy(v.get('backbone') or {})
    backbone['pretrain_img_size'] = image_size
    backbone.setdefault('init_cfg', None)  # the release's init unless the variant says
    cfg.merge_from_dict({'model.backbone': backbone})
    for name in PIPELINES:
        _resize(cfg[name], image_size)
    for name in DATALOADERS:
        cfg[name].dataset.data_root = data_root
        _resize(cfg[name].dataset.pipeline, image_size)
    cfg.train_dataloader.batch_size = batch_size
    for name in EVALUATORS:
        cfg[name].ann_file = data_root + 'annotations/instances_val2017.json'
    _set_length(cfg, base, iters)
    cfg.data_root, cfg.image_size = data_root, image_size
    cfg.custom_hooks = copy.deepcopy(custom_hooks(variant, iters))
    cfg.default_hooks.logger.interval = log_interval
    cfg.randomness = dict(seed=seed)
    return cfg


def write_config(path: str, base: str, variant: str, seed: int, data_root: str,
                 image_size: int, iters: int, batch_size: int = 4,
                 log_interval: int = 10) -> str:
    """:func:`study_config` written (atomically) to ``path``; returns ``path``."""
    cfg = study_config(base, variant, seed, data_root, image_size, iters, batch_size,
                       log_interval)
    atomic_write_text(f'# tools/prepbn_study.py: variant {variant!r}, seed {seed}, from '
                      f'{base}\n' + cfg.pretty_text, path)
    return path
