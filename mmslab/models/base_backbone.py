"""The base class of the SLAB backbones: the order of weight init and the
``init_cfg=dict(type='Pretrained', ...)`` path, ``frozen_stages`` / ``norm_eval`` in
``train()``, input checks, the deploy fold, and the folded / trained weight-form guard on
every load."""
from abc import abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, initialize
from mmengine.registry import WEIGHT_INITIALIZERS
from torch.nn.modules.batchnorm import _BatchNorm

from ..validation import check_bool, check_float, check_int, check_out_indices
from ..prepbn import PRepBN, RepBN
from .pretrained import load_pretrained
from .weight_form import check_state_dict_form
from .weight_init import init_transformer_weights


class SLABBackbone(BaseModule):
    """What both SLAB backbones share: ``init_cfg=dict(type='Pretrained', checkpoint=...,
    prefix=None)`` loaded by the backbone itself (release files keep their weights under
    'model'), ``frozen_stages`` / ``norm_eval`` in :meth:`train`, input checks and the
    deploy fold. Subclasses set ``convert_checkpoint``, ``in_channels``, ``norm_eval``,
    ``deploy``, implement :meth:`feature_shapes` and say what ``frozen_stages`` freezes
    (:meth:`frozen_modules`, :meth:`frozen_parameters`)."""

    #: regexes of model keys a release checkpoint does not have (kept at their init)
    optional_keys: Tuple[str, ...] = ()
    convert_checkpoint: Any = None

    def __init__(self, init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        # a bad init_cfg fails now, not at init_weights()
        self._pretrained_cfg()
        for cfg in self._initializer_cfgs():
            WEIGHT_INITIALIZERS.build(cfg)
        # Folded and trained-form weights never mix, under every loading route:
        # load_state_dict (strict or not, inside a detector too), mmengine's
        # load_checkpoint / Runner load_from / resume, and init_cfg.
        self.register_load_state_dict_pre_hook(_refuse_other_form)

    def set_common_options(self, num_stages: int, *, in_channels: int,
                           out_indices: Union[int, Sequence[int]], frozen_stages: int,
                           drop_rate: float, attn_drop_rate: float, drop_path_rate: float,
                           qkv_bias: bool, norm_eval: bool, with_cp: bool,
                           deploy: bool) -> None:
        """Check the options both backbones take (mmdet's vocabulary) and keep those that
        outlive the constructor: ``in_channels``, ``out_indices`` (sorted, negative ones
        from the end), ``frozen_stages``, ``norm_eval``, ``deploy``."""
        name = type(self).__name__
        self.in_channels = check_int(name, 'in_channels', in_channels, min=1)
        self.out_indices = check_out_indices(name, out_indices, num_stages)
        self.frozen_stages = check_int(name, 'frozen_stages', frozen_stages, min=-1,
                                       max=num_stages)
        for arg, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                          ('drop_path_rate', drop_path_rate)):
            check_float(name, arg, rate, min=0, max=1)
        for arg, flag in (('qkv_bias', qkv_bias), ('norm_eval', norm_eval), ('with_cp', with_cp),
                          ('deploy', deploy)):
            check_bool(name, arg, flag)
        self.norm_eval = norm_eval
        self.deploy = deploy

    def frozen_modules(self) -> List[nn.Module]:
        """The modules ``frozen_stages`` freezes: kept in eval mode, parameters without
        gradients (none here)."""
        return []

    def frozen_parameters(self) -> List[nn.Parameter]:
        """Parameters ``frozen_stages`` freezes outside :meth:`frozen_modules` (e.g. a
        position table held by a stage; none here)."""
        return []

    def check_input(self, x: torch.Tensor, weight_dtype: torch.dtype, min_size: int = 1) -> None:
        """Shape and dtype of the images (cheap: Python on sizes only; skipped while
        tracing, where the sizes are symbolic)."""
        if torch.jit.is_tracing():
            return
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{name} expects images (B, {self.in_channels}, H, W), got a '
                             f'tensor of shape {tuple(x.shape)}')
        if x.shape[2] < min_size or x.shape[3] < min_size:  # (not min(): no H-vs-W guard)
            raise ValueError(f'{name} needs images of at least {min_size}x{min_size} pixels, '
                             f'got {tuple(x.shape[2:])}')
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f'{name} got a {x.dtype} input but its weights are {weight_dtype}: cast the '
                f'input (x.to({weight_dtype})), convert the model (model.to({x.dtype})) or '
                'run under torch.autocast')

    def empty_outputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The (empty) feature maps of an empty batch ``x``."""
        return tuple(x.new_zeros(0, c, h, w)
                     for c, (h, w) in self.feature_shapes(x.shape[2], x.shape[3]))

    @abstractmethod
    def feature_shapes(self, h: int, w: int) -> List[Tuple[int, Tuple[int, int]]]:
        """``(channels, (height, width))`` of every output map for a ``h x w`` image."""

    def init_weights(self) -> None:
        """The release's init (:func:`init_transformer_weights`; skipped when ``init_cfg``
        has a ``Pretrained`` checkpoint, which then sets every weight), then the other
        initializers of ``init_cfg`` (e.g. ``dict(type='SLABScratch', ...)``, mmengine's
        ``TruncNormal`` ...), then the ``Pretrained`` checkpoint, if any."""
        if self._pretrained_cfg() is None:
            init_transformer_weights(self)
        others = self._initializer_cfgs()
        if others:
            initialize(self, others)
        self.load_pretrained()
        self._is_init = True

    def train(self, mode: bool = True) -> 'SLABBackbone':
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        for p in self.frozen_parameters():
            p.requires_grad = False
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def check_foldable(self) -> None:
        """Raise (and change nothing) unless every PRepBN can be folded (``lam = 0``)."""
        norms = [(name, m) for name, m in self.named_modules() if isinstance(m, PRepBN)]
        refused = []
        for name, norm in norms:
            try:
                norm.check_foldable()
            except ValueError as e:
                refused.append((name, e))
        if refused:
            name, error = refused[0]
            others = f' (and {len(refused) - 1} more)' if len(refused) > 1 else ''
            raise ValueError(f'{type(self).__name__}: nothing was folded: {len(refused)} of '
                             f'{len(norms)} PRepBN norms cannot be folded; {name}{others}: '
                             f'{error}')

    def switch_to_deploy(self) -> None:
        """Fold every RepBN (eval statistics) into the adjacent Linear / conv, exactly.

        Every norm is checked first (:meth:`check_foldable`): a model that cannot be folded
        whole is left untouched."""
        if self.deploy:
            return
        self.check_foldable()
        for m in self.modules():
            # the blocks fold their norms into the adjacent layers; a norm that no layer
            # absorbs (an output norm) stays the eval-mode RepBN of its trained form
            if (m is not self and hasattr(m, 'switch_to_deploy')
                    and not isinstance(m, (PRepBN, RepBN))):
                m.switch_to_deploy()
        self.deploy = True

    def _pretrained_cfg(self) -> Optional[dict]:
        """The ``Pretrained`` entry of ``init_cfg`` (checked), or None."""
        name = type(self).__name__
        cfg = self.init_cfg
        if isinstance(cfg, list):
            bad = [c for c in cfg if not isinstance(c, dict) or 'type' not in c]
            if bad:
                raise TypeError(f'{name}: every entry of init_cfg must be a dict with a '
                                f"'type' (an mmengine initializer such as 'Pretrained' or "
                                f"'SLABScratch'), got {bad[0]!r}")
            cfg = next((c for c in cfg if isinstance(c, dict) and c.get('type') == 'Pretrained'),
                       None)
        if cfg is None:
            return None
        if not isinstance(cfg, dict):
            raise TypeError(f'{name}: init_cfg must be a dict (or a list of dicts), got '
                            f'{cfg!r} ({type(cfg).__name__})')
        if cfg.get('type') != 'Pretrained':
            return None
        checkpoint = cfg.get('checkpoint')
        if checkpoint is None:
            raise ValueError(
                f"{name}: init_cfg={dict(cfg)} has type 'Pretrained' but no checkpoint: "
                "'checkpoint' must be the path or URL of a checkpoint file. To train from "
                "scratch, set init_cfg=None.")
        if not isinstance(checkpoint, str) or not checkpoint:
            raise TypeError(f"{name}: init_cfg 'checkpoint' must be a path or URL (a non-empty "
                            f"str), got {checkpoint!r} ({type(checkpoint).__name__})")
        prefix = cfg.get('prefix')
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"{name}: init_cfg 'prefix' must be a str such as 'backbone.', "
                            f"got {prefix!r} ({type(prefix).__name__})")
        return cfg

    def _initializer_cfgs(self) -> List[dict]:
        """The entries of ``init_cfg`` other than ``Pretrained``."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        return [c for c in cfgs if c is not None and c.get('type') != 'Pretrained']

    def load_pretrained(self) -> bool:
        """Load ``init_cfg``'s ``Pretrained`` checkpoint, if any (see
        :func:`~mmslab.models.pretrained.load_pretrained`); return whether one was loaded."""
        cfg = self._pretrained_cfg()
        if cfg is None:
            return False
        load_pretrained(self, cfg['checkpoint'], self.convert_checkpoint,
                        prefix=cfg.get('prefix'), optional=self.optional_keys,
                        logger=MMLogger.get_current_instance())
        return True


def _refuse_other_form(module: SLABBackbone, state_dict: Dict[str, Any], prefix: str,
                       *args: Any) -> None:
    """``load_state_dict`` pre-hook of every SLAB backbone: refuse a trained-form state
    dict for a folded (``deploy=True``) backbone and a folded one for a trained-form one
    (see :func:`~mmslab.models.weight_form.check_state_dict_form`)."""
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    check_state_dict_form(type(module).__name__, bool(getattr(module, 'deploy', False)), keys,
                          source='the state dict being loaded', prefix=prefix)
