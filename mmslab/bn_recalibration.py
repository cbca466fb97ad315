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
from mmengine.runner import Runner, load_checkpoint, save_checkpoint
from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu

from mmslab.models.norms import RepBN

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

    Args:
        model (nn.Module): An mmengine ``BaseModel`` (e.g. an mmdet detector or an
            mmseg segmentor), possibly in a model wrapper.
        data_loader (Iterable): Training batches (the train pipeline's statistics).
        num_iters (int): Number of batches to use (> 0).
        logger (logging.Logger | str, optional): Where to log (see
            :func:`mmengine.logging.print_log`). Defaults to the current logger.

    Returns:
        int: The number of recalibrated BatchNorm layers.

    Raises:
        ValueError: If the model has no RepBN, ``num_iters`` is not positive or the
            loader yields fewer than ``num_iters`` batches. In that case the running
            statistics are restored, i.e. the model is left unchanged.
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
    seen = 0
    try:
        for data in data_loader:
            _forward(model, data)
            seen += 1
            if seen == num_iters:
                break
        if seen < num_iters:
            raise ValueError(f'the data loader yielded only {seen} batches, '
                             f'{num_iters} were requested')
    except BaseException:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
        raise
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
    print_log(f'Recalibrated {len(bns)} RepBN BatchNorm layers on {seen} batches.',
              logger=logger)
    return len(bns)


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
            ``<checkpoint stem>_bnrecal.pth`` next to the input. It must differ
            from ``checkpoint``: the input file is never overwritten.
        cfg_options (dict, optional): Overrides merged into the config.

    Returns:
        str: The path of the written checkpoint.
    """
    if out is None:
        out = osp.splitext(checkpoint)[0] + '_bnrecal.pth'
    if osp.realpath(out) == osp.realpath(checkpoint):
        raise ValueError(f'refusing to overwrite the input checkpoint {checkpoint}')
    cfg = Config.fromfile(config) if isinstance(config, str) else config.copy()
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config'))[0]
        cfg.work_dir = osp.join('work_dirs', name)
    cfg.load_from = None
    cfg.resume = False

    runner = Runner.from_cfg(cfg)
    ckpt = load_checkpoint(runner.model, checkpoint, map_location='cpu', strict=True,
                           logger=runner.logger)
    recalibrate_bn(runner.model, runner.train_dataloader, iters, logger=runner.logger)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    meta = dict(ckpt.get('meta', {}))
    meta['bn_recalibration'] = dict(iters=iters, source=osp.abspath(checkpoint))
    save_checkpoint(dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(model))), out)
    runner.logger.info(f'Saved the recalibrated checkpoint to {out}')
    return out
