"""From-scratch initialisation of the SLAB backbones.

* :func:`init_transformer_weights`: the release's init, what a SLAB backbone gets with
  ``init_cfg=None``.
* ``init_cfg=dict(type='SLABScratch', linear='mmdet_pvt', repbn_alpha=0.0)``
  (:class:`SLABScratchInit`, an mmengine weight initializer): the recipe the PRepBN study
  measured for training a detector from scratch (README, "From scratch"). RepBN's identity
  term ``alpha * x`` starts at 0, so every RepBN starts as a plain BatchNorm whose output
  is normalised whatever the scale of the residual stream, and the attention input
  projections / MLPs start at mmdet PVT's scale instead of std 0.02.
"""
import math

import torch.nn as nn
from mmengine.model.weight_init import BaseInit, constant_init, normal_init, trunc_normal_
from mmengine.registry import WEIGHT_INITIALIZERS

from ..validation import check_choice, check_float
from ..prepbn import RepBN

#: leaf names of the attention input projections (PVT: q, kv; Swin: qkv) and the MLP
_QKV = ('q', 'kv', 'qkv')
_MLP = ('fc1', 'fc2')


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


@WEIGHT_INITIALIZERS.register_module(name='SLABScratch')
class SLABScratchInit(BaseInit):
    """Re-initialise a SLAB backbone for training from scratch (applied after the
    release's init, :func:`init_transformer_weights`).

    Args:
        linear: ``'release'`` keeps the release's truncated normal (std 0.02) on every
            Linear; ``'mmdet_pvt'`` initialises the attention input projections (``q``,
            ``kv``, ``qkv``) xavier-uniform over the joint ``(3C, C)`` projection, as
            ``nn.MultiheadAttention`` does in mmdet's ``PyramidVisionTransformer``, and the
            MLP (``fc1``, ``fc2``) fan-out normal, as mmdet PVT's 1x1 convs (zero biases):
            6x to 12x larger weights at the demo's width.
        repbn_alpha: the starting weight of RepBN's identity term ``BN(x) + alpha * x``
            (1 in the release; 0: every RepBN starts as a BatchNorm). It stays a trained
            parameter.

    Measured (README, "From scratch"; Mask R-CNN from scratch on the synthetic set):
    ``linear='mmdet_pvt', repbn_alpha=0.0`` with RepBN from the first iteration or an
    LN -> RepBN decay over half the run is foldable and matches mmdet PVT-T's AP; the
    release's values (``'release'``, 1.0) with the same schedules are 0.08-0.10 box AP
    lower, and ``'mmdet_pvt'`` with ``repbn_alpha=1.0`` diverges with RepBN from the start.
    """

    def __init__(self, linear: str = 'release', repbn_alpha: float = 1.0, **kwargs) -> None:
        name = 'SLABScratch'
        unknown = sorted(set(kwargs) - {'bias', 'bias_prob', 'layer'})
        if unknown:
            hint = (" (a key of the base config's init_cfg: set _delete_=True in this "
                    "init_cfg to replace it)" if 'checkpoint' in unknown else '')
            raise TypeError(f'{name}: unexpected argument(s) {unknown}{hint}; it takes '
                            "linear ('release' | 'mmdet_pvt') and repbn_alpha (a number)")
        super().__init__(**kwargs)
        self.linear = check_choice(name, 'linear', linear, ('release', 'mmdet_pvt'))
        self.repbn_alpha = check_float(name, 'repbn_alpha', repbn_alpha)

    def __call__(self, module: nn.Module) -> None:
        for name, m in module.named_modules():
            if isinstance(m, RepBN):
                nn.init.constant_(m.alpha, self.repbn_alpha)
            if self.linear != 'mmdet_pvt' or not isinstance(m, nn.Linear):
                continue
            leaf = name.rsplit('.', 1)[-1]
            if leaf in _QKV:
                bound = math.sqrt(6.0 / (m.in_features + 3 * m.in_features))
                nn.init.uniform_(m.weight, -bound, bound)
            elif leaf in _MLP:
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_features))
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: linear={self.linear}, repbn_alpha={self.repbn_alpha:g}'
