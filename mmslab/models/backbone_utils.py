"""Small pieces both SLAB backbones share: arch presets, argument checks, weight init and
the ``init_cfg=dict(type='Pretrained', ...)`` path."""
import math
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, normal_init, trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import load_pretrained
from .norms import RepBN


def resolve_arch(name: str, zoo: Dict[str, Dict[str, Any]], arch: Union[str, dict],
                 **overrides: Any) -> Dict[str, Any]:
    """Preset ``arch`` (a name in ``zoo`` or a dict) with the non-None ``overrides``."""
    if isinstance(arch, dict):
        cfg = dict(arch)
    elif arch in zoo:
        cfg = dict(zoo[arch])
    else:
        raise ValueError(f'{name}: unknown arch {arch!r}; choose one of {sorted(zoo)} or give '
                         f'a dict of the settings')
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in overrides if cfg.get(k) is None]
    if missing:
        raise ValueError(f'{name}: arch settings lack {missing}')
    return cfg


def check_out_indices(out_indices: Union[int, Sequence[int]], num_stages: int,
                      name: str) -> Tuple[int, ...]:
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    out = tuple(sorted(i % num_stages if -num_stages <= i < 0 else i for i in out_indices))
    if not out or any(not 0 <= i < num_stages for i in out) or len(set(out)) != len(out):
        raise ValueError(f'{name}: out_indices={tuple(out_indices)} must be distinct stage '
                         f'indices in [0, {num_stages - 1}]')
    return out


def init_transformer_weights(model: nn.Module) -> None:
    """From-scratch init: truncated-normal Linears and position tables (std 0.02), fan-out
    normal convs, unit norms, zero SLA positional encodings (as the release)."""
    for name, p in model.named_parameters():
        if name.endswith(('pos_embed', 'relative_position_bias_table')):
            trunc_normal_(p, std=.02)
        elif name.endswith('positional_encoding'):
            nn.init.zeros_(p)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            normal_init(m, mean=0, std=math.sqrt(2.0 / fan_out), bias=0)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            constant_init(m, val=1.0, bias=0.)
        elif isinstance(m, RepBN):
            nn.init.ones_(m.alpha)


class SLABBackbone(BaseModule):
    """What both SLAB backbones share: ``init_cfg=dict(type='Pretrained', checkpoint=...,
    prefix=None)`` loaded by the backbone itself (release files keep their weights under
    'model'), ``frozen_stages`` / ``norm_eval`` in :meth:`train`, input checks and the
    deploy fold. Subclasses set ``convert_checkpoint``, ``in_channels``, ``norm_eval``,
    ``deploy`` and implement :meth:`frozen_modules`."""

    #: regexes of model keys a release checkpoint does not have (kept at their init)
    optional_keys: Tuple[str, ...] = ()
    convert_checkpoint: Any = None

    def frozen_modules(self) -> List[nn.Module]:
        """The modules ``frozen_stages`` freezes (none here)."""
        return []

    def check_input(self, x: torch.Tensor, min_size: int = 1) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects images (B, {self.in_channels}, H, W),'
                             f' got a tensor of shape {tuple(x.shape)}')
        if min(x.shape[2:]) < min_size:
            raise ValueError(f'{type(self).__name__} needs images of at least '
                             f'{min_size}x{min_size} pixels, got {tuple(x.shape[2:])}')

    def init_weights(self) -> None:
        if not self.load_pretrained():
            init_transformer_weights(self)
        self._is_init = True

    def train(self, mode: bool = True) -> 'SLABBackbone':
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self) -> None:
        """Fold every RepBN (eval statistics) into the adjacent Linear / conv, exactly."""
        for m in self.modules():
            if m is not self and hasattr(m, 'switch_to_deploy'):
                m.switch_to_deploy()
        self.deploy = True

    def load_pretrained(self) -> bool:
        cfg = self.init_cfg
        if isinstance(cfg, list):
            cfg = next((c for c in cfg if c.get('type') == 'Pretrained'), None)
        if not cfg or cfg.get('type') != 'Pretrained':
            return False
        if 'checkpoint' not in cfg:
            raise ValueError(f"{type(self).__name__}: init_cfg of type 'Pretrained' needs "
                             f"'checkpoint' (a path or URL), got {cfg}")
        load_pretrained(self, cfg['checkpoint'], self.convert_checkpoint,
                        prefix=cfg.get('prefix'), optional=self.optional_keys,
                        logger=MMLogger.get_current_instance())
        return True
