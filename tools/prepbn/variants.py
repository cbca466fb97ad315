"""The variants of the PRepBN from-scratch study: a backbone override of the study's
base config, the PRepBN schedule (``custom_hooks``), a label and whether the run ends
foldable.

The labels ``(a)``-``(d8)`` are the README table's. Every SLAB-PVT variant states its
backbone ``init_cfg``: ``None`` (the release's init: truncated normal std 0.02 on every
Linear, RepBN ``alpha = 1``) unless it names ``SLABScratch`` settings (the init_cfg type
of :mod:`mmslab.models.weight_init`).

* ``pvt_t``: mmdet's stock ``PyramidVisionTransformer`` (PVT v1: softmax attention with
  spatial reduction, LayerNorm) at the width and depth of the demo's SLAB-PVT.
* ``ln_kept`` (a): SLAB-PVT keeping LayerNorm (``PRepBNHook`` lam = 1 throughout);
  evaluated as LayerNorm (eval mode honours lam). Not foldable.
* ``prepbn_bn`` (b): LayerNorm -> RepBN over the first 80% of the run (``r0=1,
  decay_iters=0.8``).
* ``bn_scratch`` (c): RepBN from the first iteration (``r0=0``).
* ``prepbn_early`` (d1): the decay ends at half the run (``decay_iters=0.5``).
* ``prepbn_late`` (d2): LayerNorm for the first half of the run (``warmup_iters``), the
  decay to RepBN from 0.5 to 0.8 of the run, pure RepBN for the last fifth.
* ``ln_pvtinit`` (control), ``prepbn_pvtinit`` (d3), ``bn_pvtinit`` (d4): (a), (b), (c)
  with ``SLABScratch(linear='mmdet_pvt')``: the attention input projections and the MLP
  initialised as mmdet's PVT initialises its own.
* ``bn_alpha0`` (d5): (c) with ``SLABScratch(repbn_alpha=0)``: RepBN starts as a BN.
* ``bn_alpha0_pvtinit`` (d6), ``prepbn_alpha0_pvtinit`` (d7), ``early_alpha0_pvtinit``
  (d8): (c), (b), (d1) with both, ``SLABScratch(linear='mmdet_pvt', repbn_alpha=0)``.

BN recalibration (``--recal-iters``, on the checkpoints of ``--recal-variants``): the
statistics re-estimated over N training batches (the loader cycles when N is more than an
epoch), everything else unchanged; reported as ``<variant> + BN recalibration over N
batches``.
"""
from typing import Dict, List

# the demo's SLAB-PVT (configs/demo/mask_rcnn_slab_pvt_demo.py)
DEMO_WIDTH = dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8],
                  mlp_ratios=[4, 4, 4, 4], depths=[1, 1, 2, 1])
NEVER = 10**9  # warmup_iters that outlasts any run: lam stays at r0


def _scratch(linear: str, repbn_alpha: float = 1.0) -> dict:
    # _delete_: replaces whatever init_cfg the base config has (None or a dict)
    return dict(_delete_=True, type='SLABScratch', linear=linear, repbn_alpha=repbn_alpha)


def _prepbn(r0: float = 1.0, warmup_iters: int = 0, decay_iters=0.8) -> dict:
    return dict(type='PRepBNHook', r0=r0, warmup_iters=warmup_iters, decay_iters=decay_iters)


#: name -> label, backbone override of the base config, custom_hooks, foldable
VARIANTS: Dict[str, dict] = {
    'pvt_t': dict(
        label='mmdet PVT-T (LayerNorm, softmax SR attention)',
        backbone=dict(_delete_=True, type='PyramidVisionTransformer', embed_dims=32,
                      num_layers=DEMO_WIDTH['depths'], num_heads=DEMO_WIDTH['num_heads'],
                      mlp_ratios=DEMO_WIDTH['mlp_ratios'], sr_ratios=[8, 4, 2, 1],
                      out_indices=(0, 1, 2, 3), drop_path_rate=0.0, init_cfg=None),
        hooks=[], foldable=False),
    'ln_kept': dict(label='(a) SLAB-PVT, LayerNorm kept (lam = 1)',
                    hooks=[_prepbn(1.0, NEVER, 1)], foldable=False),
    'prepbn_bn': dict(label='(b) SLAB-PVT, PRepBN LN -> BN over 0.8 of the run',
                      hooks=[_prepbn(1.0, 0, 0.8)], foldable=True),
    'bn_scratch': dict(label='(c) SLAB-PVT, RepBN from the start (r0 = 0)',
                       hooks=[_prepbn(0.0)], foldable=True),
    'prepbn_early': dict(label='(d1) SLAB-PVT, PRepBN LN -> BN over 0.5 of the run',
                         hooks=[_prepbn(1.0, 0, 0.5)], foldable=True),
    # hooks as a function of the run length: PRepBNHook's warmup_iters is a count
    'prepbn_late': dict(
        label='(d2) SLAB-PVT, LayerNorm until 0.5 of the run, LN -> BN from 0.5 to 0.8',
        hooks=lambda iters: [_prepbn(1.0, iters // 2, round(0.3 * iters))], foldable=True),
    # the initialisation (init_cfg=dict(type='SLABScratch', ...), mmslab/models/weight_init.py)
    'ln_pvtinit': dict(
        label="(control) (a) with mmdet PVT's init of q/kv and MLP (`linear='mmdet_pvt'`)",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(1.0, NEVER, 1)],
        foldable=False),
    'prepbn_pvtinit': dict(
        label="(d3) (b) with `linear='mmdet_pvt'`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(1.0, 0, 0.8)],
        foldable=True),
    'bn_pvtinit': dict(
        label="(d4) (c) with `linear='mmdet_pvt'`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(0.0)], foldable=True),
    'bn_alpha0': dict(
        label='(d5) (c) with RepBN alpha starting at 0 (`repbn_alpha=0`)',
        backbone=dict(init_cfg=_scratch('release', 0.0)), hooks=[_prepbn(0.0)], foldable=True),
    'bn_alpha0_pvtinit': dict(
        label="**(d6) (c) with `linear='mmdet_pvt', repbn_alpha=0`**",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(0.0)],
        foldable=True),
    'prepbn_alpha0_pvtinit': dict(
        label="(d7) (b) with `linear='mmdet_pvt', repbn_alpha=0`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(1.0, 0, 0.8)],
        foldable=True),
    'early_alpha0_pvtinit': dict(
        label="**(d8) (d1) with `linear='mmdet_pvt', repbn_alpha=0` (the demo's)**",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(1.0, 0, 0.5)],
        foldable=True),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
DEFAULT_RECAL_VARIANTS = ('prepbn_bn', 'bn_alpha0_pvtinit')


def custom_hooks(variant: str, iters: int) -> List[dict]:
    """The ``custom_hooks`` of ``variant`` for a run of ``iters`` iterations."""
    hooks = VARIANTS[variant]['hooks']
    return hooks(iters) if callable(hooks) else hooks
