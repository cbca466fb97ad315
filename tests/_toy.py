"""A tiny mmengine model / dataset / metric with PRepBN, for the hook and BN tests.

Importable as ``_toy`` (``pythonpath`` in pyproject.toml puts ``tests/`` on the pytest
process's ``sys.path``) so that configs can load it with
``custom_imports=dict(imports=['_toy'])``; a test that runs such a config in a subprocess
puts ``tests/`` on its ``PYTHONPATH``.
"""
import uuid
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DATASETS, METRICS, MODELS
from torch.utils.data import Dataset

from mmslab.prepbn import PRepBN


@DATASETS.register_module(name='MMSlabToyTokens', force=True)
class ToyTokens(Dataset):
    """``length`` random token tensors ``(tokens, channels)`` (mean 3, std 2) + targets."""

    def __init__(self, length: int = 16, tokens: int = 5, channels: int = 4,
                 seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(length, tokens, channels, generator=g) * 2 + 3
        self.targets = torch.randn(length, tokens, generator=g)
        self.metainfo: dict = dict(classes=('toy', ))

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return dict(inputs=self.inputs[i], targets=self.targets[i])


@MODELS.register_module(name='MMSlabToyModel', force=True)
class ToyModel(BaseModel):
    """``PRepBN -> Linear -> ReLU -> Dropout -> PRepBN -> Linear`` on ``(B, N, C)`` tokens.

    Every training forward appends the ``lam`` of all PRepBN modules to ``self.lams``.
    ``forwards_per_step > 1`` makes ``train_step`` run the model several times per
    iteration; ``prepbn=False`` uses LayerNorms instead.
    """

    def __init__(self,
                 channels: int = 4,
                 prepbn: bool = True,
                 forwards_per_step: int = 1,
                 dropout: float = 0.0,
                 data_preprocessor: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        norm = PRepBN if prepbn else nn.LayerNorm
        self.norm0 = norm(channels)
        self.fc = nn.Linear(channels, channels)
        self.drop = nn.Dropout(dropout)
        self.norm1 = norm(channels)
        self.head = nn.Linear(channels, 1)
        self.forwards_per_step = forwards_per_step
        self.lams: List[Tuple[float, ...]] = []

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input of ``norm1``."""
        return self.drop(F.relu(self.fc(self.norm0(inputs))))

    def forward(self,
                inputs: torch.Tensor,
                targets: Optional[torch.Tensor] = None,
                mode: str = 'tensor') -> Union[torch.Tensor, dict, list]:
        if self.training:
            self.lams.append(tuple(float(m.lam) for m in self.modules() if isinstance(m, PRepBN)))
        out = self.head(self.norm1(self.features(inputs))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=F.mse_loss(out, targets))
        if mode == 'predict':
            return [dict(pred=o, target=t) for o, t in zip(out, targets)]
        return out

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        if self.forwards_per_step == 1:
            return super().train_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = {f'loss_{k}': self(**data, mode='loss')['loss']
                      for k in range(self.forwards_per_step)}
        parsed, log_vars = self.parse_losses(losses)
        optim_wrapper.update_params(parsed)
        return log_vars


@METRICS.register_module(name='MMSlabToyMetric', force=True)
class ToyMetric(BaseMetric):
    """Mean squared error of the toy model's predictions."""

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            self.results.append(F.mse_loss(s['pred'], s['target']).item())

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return dict(mse=sum(results) / len(results))


def toy_loader_cfg(batch_size: int = 4, length: int = 16, shuffle: bool = True,
                   sampler: str = 'InfiniteSampler') -> dict:
    """A dataloader config for :class:`ToyTokens`.

    Iteration-based loops want the ``InfiniteSampler``: with a finite one mmengine
    sleeps 2 s at every epoch boundary.
    """
    return dict(batch_size=batch_size, num_workers=0,
                dataset=dict(type='MMSlabToyTokens', length=length),
                sampler=dict(type=sampler, shuffle=shuffle),
                collate_fn=dict(type='default_collate'))


def toy_runner_cfg(work_dir: str, max_iters: int = 8, hook: Optional[dict] = None,
                   **overrides) -> dict:
    """Keyword arguments of an iteration-based ``Runner`` training the toy model."""
    cfg = dict(
        model=dict(type='MMSlabToyModel'),
        work_dir=str(work_dir),
        experiment_name=f'toy_{uuid.uuid4().hex}',
        train_dataloader=toy_loader_cfg(),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=10**9),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=10**9, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='PRepBNHook') if hook is None else hook],
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=0),
    )
    cfg.update(overrides)
    return cfg
