"""Re-estimate the BatchNorm statistics of RepBN / PRepBN after training.

The SLAB paper ends training by freezing the weights and re-estimating only the BN
running statistics (drop-path shifts the variance seen in training): every RepBN
BatchNorm runs in train mode with a cumulative average, everything else in eval mode
(drop-path and dropout off, other BatchNorms frozen, PRepBN -> RepBN only).
"""
import logging
import os.path as osp
from typing import Any, Iterable, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu

from mmslab.config import load_config
from mmslab.fileio import atomic_save, check_outputs
from mmslab.checkpoint_io import load_model_weights, read_checkpoint
from .norm import RepBN

LoggerType = Optional[Union[logging.Logger, str]]


def _forward(model: nn.Module, data: Any) -> None:
    """Run one preprocessed batch through an mmengine ``BaseModel`` in tensor mode."""
    data = model.data_preprocessor(data, training=True)
    if isinstance(data, dict):
        model(**data, mode='tensor')
    elif isinstance(data, (list, tuple)):
        model(*data, mode='tensor')
    else:
        raise TypeError(f'the data preprocessor returned an unsupported {type(data)}')


@torch.no_grad()
def recalibrate_bn(model: nn.Module,
                   data_loader: Iterable,
                   num_iters: int,
                   logger: LoggerType = None) -> int:
    """Re-estimate the running statistics of every RepBN BatchNorm of ``model``.

    The BatchNorms of all :class:`RepBN` modules (including those inside PRepBN) are
    reset and put in train mode with ``momentum=None`` (cumulative average over the
    ``num_iters`` batches); the rest of the model runs in eval mode. Each batch goes
    through ``model.data_preprocessor(data, training=True)`` and
    ``model(..., mode='tensor')`` under ``torch.no_grad()``. Parameters are not
    touched; momentum and training flags are restored afterwards. Other BatchNorms
    (e.g. in a neck or head) keep their statistics.

    When ``num_iters`` is more than one pass over ``data_loader`` holds, the loader is
    iterated again (as many passes as needed; the last one stops after ``num_iters``
    batches in all). A sampler with ``set_epoch`` (mmengine's ``DefaultSampler``,
    torch's ``DistributedSampler``; on ``data_loader.sampler`` or
    ``data_loader.batch_sampler.sampler``) is given the next epoch before each new pass,
    so a shuffling sampler draws a new order; its epoch is set back to where it was
    afterwards.

    Args:
        model (nn.Module): An mmengine ``BaseModel`` (e.g. an mmdet detector or an
            mmseg segmentor), possibly in a model wrapper.
        data_loader (Iterable): Training batches (the train pipeline's statistics); a
            re-iterable (a ``DataLoader``, a list) when ``num_iters`` exceeds one pass.
        num_iters (int): Number of batches to use (> 0).
        logger (logging.Logger | str, optional): Where to log (see
            :func:`mmengine.logging.print_log`). Defaults to the current logger.

    Returns:
        int: The number of recalibrated BatchNorm layers.

    Raises:
        ValueError: If the model has no RepBN, ``num_iters`` is not positive, the loader
            yields no batch, or it is a one-shot iterable (an iterator / generator)
            exhausted before ``num_iters`` batches. In that case the running statistics
            are restored, i.e. the model is left unchanged.
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters <= 0:
        raise ValueError(f'num_iters must be a positive int, got {num_iters!r}')
    if is_model_wrapper(model):
        model = model.module
    bns: List[nn.BatchNorm1d] = [m.bn for m in model.modules() if isinstance(m, RepBN)]
    if not bns:
        raise ValueError(f'{type(model).__name__} has no RepBN/PRepBN module: '
                         'nothing to recalibrate')
    logger = 'current' if logger is None else logger

    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    model.eval()
    for bn in bns:
        bn.train()
        bn.momentum = None
        bn.reset_running_stats()
    seen = passes = 0
    sampler = _epoch_sampler(data_loader)
    start_epoch = getattr(sampler, 'epoch', 0) if sampler is not None else 0
    try:
        while seen < num_iters:
            if passes and sampler is not None:
                sampler.set_epoch(start_epoch + passes)
            passes += 1
            before = seen
            for data in data_loader:
                _forward(model, data)
                seen += 1
                if seen == num_iters:
                    break
            if seen == before:
                if passes == 1:
                    raise ValueError('the data loader yielded no batch')
                raise ValueError(
                    f'the data loader yielded only {seen} batches and none when iterated '
                    f'again ({num_iters} were requested): pass a re-iterable loader (a '
                    'DataLoader, a list), not a one-shot iterator')
    except BaseException:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
        raise
    finally:
        if passes > 1 and sampler is not None:
            sampler.set_epoch(start_epoch)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
    print_log(f'Recalibrated {len(bns)} RepBN BatchNorm layers on {seen} batches'
              + (f' ({passes} passes over the data loader).' if passes > 1 else '.'),
              logger=logger)
    return len(bns)


def _epoch_sampler(data_loader: Iterable) -> Optional[Any]:
    """The loader's sampler with ``set_epoch`` (where mmengine's train loops look)."""
    for sampler in (getattr(data_loader, 'sampler', None),
                    getattr(getattr(data_loader, 'batch_sampler', None), 'sampler', None)):
        if callable(getattr(sampler, 'set_epoch', None)):
            return sampler
    return None


def recalibrate_checkpoint(config: Union[str, Config],
                           checkpoint: str,
                           iters: int,
                           out: Optional[str] = None,
                           cfg_options: Optional[dict] = None) -> str:
    """Recalibrate the RepBN statistics of a checkpoint on its training data.

    Builds an mmengine :class:`Runner` from ``config`` (which must register the
    model, e.g. with ``custom_imports=dict(imports=['mmslab'])``), loads
    ``checkpoint`` strictly, runs :func:`recalibrate_bn` for ``iters`` batches of
    the config's ``train_dataloader`` and saves ``{'meta', 'state_dict'}`` to
    ``out``. The input checkpoint's ``meta`` is kept (with an added
    ``bn_recalibration`` entry); optimizer and scheduler states are dropped.

    Args:
        config (str | Config): Config file or object.
        checkpoint (str): Trained checkpoint (an mmengine checkpoint file).
        iters (int): Number of training batches for the statistics.
        out (str, optional): Output path. Defaults to
            ``<checkpoint stem>_bnrecal.pth`` next to the input. It must not be
            (or resolve to, through symlinks / hard links) ``checkpoint`` or
            ``config``: inputs are never overwritten. Written atomically (an
            interrupted run leaves the old file or none).
        cfg_options (dict, optional): Overrides merged into the config.

    Returns:
        str: The path of the written checkpoint.
    """
    if out is None:
        out = osp.splitext(checkpoint)[0] + '_bnrecal.pth'
    check_outputs({'output checkpoint': out},
                  {'checkpoint': checkpoint, 'config': config if isinstance(config, str) else None},
                  'recalibrate_checkpoint')
    cfg = load_config(config, cfg_options)
    if cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
        cfg.work_dir = osp.join('work_dirs', name)
    cfg.load_from = None
    cfg.resume = False

    runner = Runner.from_cfg(cfg)
    ckpt = read_checkpoint(checkpoint, map_location='cpu', logger=runner.logger)
    load_model_weights(runner.model, ckpt, strict=True, logger=runner.logger, source=checkpoint)
    recalibrate_bn(runner.model, runner.train_dataloader, iters, logger=runner.logger)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    meta = dict(ckpt.get('meta', {}))
    meta['bn_recalibration'] = dict(iters=iters, source=osp.abspath(checkpoint))
    atomic_save(dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(model))), out)
    runner.logger.info(f'Saved the recalibrated checkpoint to {out}')
    return out
