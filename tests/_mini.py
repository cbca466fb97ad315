"""The mini SLAB backbones of the test suite, defined once.

``MINI[name] = (class, kwargs)``. Each entry gives the whole structure -- widths, heads,
MLP ratios, depths -- so that its kwargs merged into a config's ``backbone`` replace the
config's structure (tests/test_e2e.py), and the attention layout / windows where they
differ from the class defaults (SLABPVT 'LLLL'; SLABSwin 'LLSS', windows (56, 28, 7, 7)):

* ``slab_pvt``: SLAB-PVT-T's layout, 16/32/40/64 channels, one block per stage;
* ``pvt_prepbn``: the same with spatial-reduction softmax attention in every stage;
* ``slab_swin``: SLAB-Swin-T's layout, 16 channels, 2 blocks per stage (a plain and a
  shifted-window block);
* ``swin_prepbn``: the same with window softmax attention everywhere, window 7;
* ``pvt_demo``: the demo detector's SLAB-PVT (configs/demo/mask_rcnn_slab_pvt_demo.py).

A test that needs a variant says so with overrides, e.g.
``mini_backbone('slab_swin', embed_dims=32)``. The conformance tests build the reference
vectors' own architectures (tests/data/reference), not these.

Importable as ``_mini`` (``pythonpath`` in pyproject.toml puts ``tests/`` on ``sys.path``).
"""
import copy
from typing import Any, Dict, Tuple, Type

import torch
import torch.nn as nn

from mmslab.models import SLABPVT, SLABSwin

_PVT = dict(embed_dims=[16, 32, 40, 64], num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
            depths=[1, 1, 1, 1])
_SWIN = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])

MINI: Dict[str, Tuple[Type[nn.Module], Dict[str, Any]]] = {
    'slab_pvt': (SLABPVT, _PVT),
    'pvt_prepbn': (SLABPVT, dict(_PVT, attn_types='SSSS')),
    'slab_swin': (SLABSwin, _SWIN),
    'swin_prepbn': (SLABSwin, dict(_SWIN, attn_types='SSSS', window_sizes=7)),
    'pvt_demo': (SLABPVT, dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8],
                               mlp_ratios=[4, 4, 4, 4], depths=[1, 1, 2, 1])),
}
#: the four models of the test matrices: SLAB-PVT, PVT-PRepBN, SLAB-Swin, Swin-PRepBN
MODELS = ('slab_pvt', 'pvt_prepbn', 'slab_swin', 'swin_prepbn')


def mini_kwargs(name: str, **overrides) -> Dict[str, Any]:
    """A fresh copy of ``MINI[name]``'s kwargs with ``overrides`` applied."""
    return {**copy.deepcopy(MINI[name][1]), **overrides}


def mini_spec(name: str, **overrides) -> Tuple[Type[nn.Module], Dict[str, Any]]:
    """``(class, kwargs)`` of ``MINI[name]`` with ``overrides`` applied."""
    return MINI[name][0], mini_kwargs(name, **overrides)


def mini_backbone(name: str, **overrides) -> nn.Module:
    """A new ``MINI[name]`` backbone (constructor arguments ``overrides`` added)."""
    cls, kw = mini_spec(name, **overrides)
    return cls(**kw)


def config_kwargs(name: str, **overrides) -> str:
    """``MINI[name]``'s kwargs as the keyword arguments of a python config's ``dict(...)``."""
    return ', '.join(f'{k}={v!r}' for k, v in mini_kwargs(name, **overrides).items())


_FORMS: Dict[str, Tuple[dict, dict]] = {}


def trained_and_folded(name: str, **overrides) -> Tuple[dict, dict]:
    """The trained-form state dict of ``mini_backbone(name, **overrides)`` (seed 0, release
    init, eval mode) and its folded (deploy) state dict. Built once per session and
    shared: callers only read them."""
    key = repr((name, sorted(overrides.items())))
    if key not in _FORMS:
        torch.manual_seed(0)
        trained = mini_backbone(name, **overrides).eval()
        folded = copy.deepcopy(trained)
        folded.switch_to_deploy()
        _FORMS[key] = trained.state_dict(), folded.state_dict()
    return _FORMS[key]
