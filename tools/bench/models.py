"""The benchmarked models (backbones; the Deformable DETR encoder; whole classifiers,
tools/bench/classifiers.py): names, how each is built, how it is put in a mode, and its
``torch.compile`` twin."""
import time
from typing import Dict, Optional

import torch
import torch.nn as nn

MODELS: Dict[str, str] = {
    'slab_pvt_t': 'SLAB-PVT-T',
    'slab_pvt_t_deploy': 'SLAB-PVT-T deploy',
    'pvt_t': 'PVT-T (mmdet)',
    'slab_swin_t': 'SLAB-Swin-T',
    'slab_swin_t_deploy': 'SLAB-Swin-T deploy',
    'swin_t': 'Swin-T (mmdet)',
    'swin_prepbn_t': 'Swin-T-PRepBN',
    'swin_prepbn_t_deploy': 'Swin-T-PRepBN deploy',
    'pvtv2_b0': 'PVTv2-b0 (mmdet)',
    'pvtv2_b0_prepbn': 'PVTv2-b0 PRepBN (mmdet)',
    'pvtv2_b0_prepbn_deploy': 'PVTv2-b0 PRepBN deploy (mmdet)',
    # tools/bench/detr.py: the encoder alone, on the tokens of an image of the case's size
    'deformable_detr_encoder': 'Deformable DETR encoder (mmdet)',
    'deformable_detr_encoder_prepbn': 'Deformable DETR encoder PRepBN (mmdet)',
    'deformable_detr_encoder_prepbn_deploy': 'Deformable DETR encoder PRepBN deploy (mmdet)',
    # tools/bench/classifiers.py: whole ImageNet classifiers (mmpretrain ImageClassifier),
    # the logits of a batch of images (not in the default run: --models names them)
    'swin_t_cls': 'Swin-T classifier (mmpretrain)',
    'slab_swin_t_cls': 'SLAB-Swin-T classifier',
    'slab_swin_t_cls_deploy': 'SLAB-Swin-T classifier deploy',
    'slab_pvt_t_cls': 'SLAB-PVT-T classifier',
    'slab_pvt_t_cls_deploy': 'SLAB-PVT-T classifier deploy',
}
#: the classifiers' trained forms (tools/bench/classifiers.py)
CLASSIFIERS = ('swin_t_cls', 'slab_swin_t_cls', 'slab_pvt_t_cls')
#: what a run measures unless told (--models): all but the classifiers, which are
#: ImageNet models of 224 px, not of the detection sizes
DEFAULT_MODELS = tuple(n for n in MODELS if n.removesuffix('_deploy') not in CLASSIFIERS)
# SLAB model -> its stock twin (Swin-T-PRepBN vs Swin-T: the paper's detection pair; both
# SLAB classifiers vs mmpretrain's Swin-T classifier: mmpretrain 1.2 has no PVT one)
STOCK = {'slab_pvt_t': 'pvt_t', 'slab_swin_t': 'swin_t', 'swin_prepbn_t': 'swin_t',
         'pvtv2_b0_prepbn': 'pvtv2_b0',
         'deformable_detr_encoder_prepbn': 'deformable_detr_encoder',
         'slab_swin_t_cls': 'swin_t_cls', 'slab_pvt_t_cls': 'swin_t_cls'}
COMPILED = '+compile'  # name suffix of the torch.compile'd twin of a model
#: PRepBN lam of the SLAB models in training steps (both branches, mid-schedule)
TRAIN_LAM = 0.5


def base_name(name: str) -> str:
    """The eager model's name of ``name`` (``x+compile`` -> ``x``)."""
    return name.removesuffix(COMPILED)


def family(name: str) -> str:
    """The trained form's name of ``name`` (``x_deploy+compile`` -> ``x``)."""
    return base_name(name).removesuffix('_deploy')


def stock_twin(name: str) -> Optional[str]:
    """The stock model ``name`` is compared with (None for the stock ones)."""
    return STOCK.get(family(name))


def label(name: str) -> str:
    base = base_name(name)
    return MODELS.get(base, base) + (' [compiled]' if name.endswith(COMPILED) else '')


def build_backbone(name: str, mini: bool = False,
                   device: Optional[torch.device] = None) -> nn.Module:
    """One of :data:`MODELS` in eval mode (``*_deploy``: norms folded), on ``device``.
    ``mini``: the same architecture with small widths and depths (for smoke tests)."""
    base, deploy = name.removesuffix('_deploy'), name.endswith('_deploy')
    initialised = False
    if base == 'slab_pvt_t':
        from mmslab.models import SLABPVT
        model = SLABPVT(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1]) if mini \
            else SLABPVT('tiny')
    elif base in ('slab_swin_t', 'swin_prepbn_t'):
        from mmslab.models import SLABSwin
        kw = dict(attn_types='SSSS', window_sizes=7) if base == 'swin_prepbn_t' else {}
        model = SLABSwin(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], **kw) \
            if mini else SLABSwin('tiny', **kw)
    elif base == 'pvt_t' and not deploy:
        from mmdet.models.backbones import PyramidVisionTransformer
        model = PyramidVisionTransformer(embed_dims=16 if mini else 64,
                                         num_layers=[1, 1, 1, 1] if mini else [2, 2, 2, 2])
    elif base == 'swin_t' and not deploy:
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(embed_dims=16 if mini else 96, depths=[2, 2, 2, 2] if mini
                                else [2, 2, 6, 2], num_heads=[1, 2, 4, 8] if mini
                                else [3, 6, 12, 24], window_size=7)
    elif base in ('pvtv2_b0', 'pvtv2_b0_prepbn') and not (deploy and base == 'pvtv2_b0'):
        # mmdet's own PVTv2-b0, its LayerNorms or norm_cfg=dict(type='PRepBN')
        from mmdet.models.backbones import PyramidVisionTransformerV2
        norm = 'PRepBN' if base.endswith('prepbn') else 'LN'
        model = PyramidVisionTransformerV2(
            embed_dims=16 if mini else 32, num_layers=[1, 1, 1, 1] if mini else [2, 2, 2, 2],
            norm_cfg=dict(type=norm, eps=1e-6))
    elif base in ('deformable_detr_encoder', 'deformable_detr_encoder_prepbn') and \
            not (deploy and base == 'deformable_detr_encoder'):
        from .detr import build_detr_encoder
        model = build_detr_encoder(prepbn=base.endswith('prepbn'), mini=mini)
        initialised = True  # by the whole detector's init_weights, before it was cut down
    elif base in CLASSIFIERS and not (deploy and base == 'swin_t_cls'):
        from .classifiers import build_classifier
        model = build_classifier(base, mini=mini)
        initialised = True  # by the classifier's own init_weights (its config's init_cfg)
    else:
        raise KeyError(f'unknown model {name!r}; choose from {list(MODELS)}')
    if not initialised:
        model.init_weights()
    model.eval()
    if deploy:  # (on the CPU, before the move): SLAB backbones fold into their layers,
        from mmslab.models import reparameterize  # other PRepBNs become affine maps
        reparameterize(model)
    if device is not None:
        model.to(device)
    return model


def set_mode(model: nn.Module, train: bool) -> None:
    """Eval, or train as the benchmark trains: SLAB's RepBN BatchNorms on batch statistics
    (``norm_eval=False``) and ``lam = TRAIN_LAM``; eval runs the converged ``lam = 0``."""
    from mmslab.prepbn import set_prepbn_lam
    for m in model.modules():
        if hasattr(m, 'norm_eval') and hasattr(m, 'frozen_modules'):  # SLAB backbones
            m.norm_eval = False
    set_prepbn_lam(model, TRAIN_LAM if train else 0.0)
    model.train(train)  # (mmdet's SwinTransformer.train returns None: no chaining)


def add_compiled_twins(built: Dict[str, nn.Module], backend: str, mode: Optional[str],
                       device: torch.device, log) -> None:
    """Add a ``torch.compile`` twin ``<name>+compile`` (sharing the weights) of every model
    in ``built``, and run dynamo / the backend once so that their start-up is no model's
    compile time."""
    import torch._dynamo as dynamo
    # every case is a new graph (shape, dtype, mode): keep them all ('recompile_limit'
    # since torch 2.6, 'cache_size_limit' before)
    for attr in ('recompile_limit', 'cache_size_limit'):
        if hasattr(dynamo.config, attr):
            setattr(dynamo.config, attr, max(getattr(dynamo.config, attr), 64))
    for name in list(built):
        built[name + COMPILED] = torch.compile(built[name], backend=backend, mode=mode)
    t0 = time.perf_counter()
    torch.compile(lambda t: t * 2 + 1, backend=backend)(torch.ones(8, device=device))
    log(f'torch.compile start-up ({backend}): {time.perf_counter() - t0:.1f} s')


def graph_breaks() -> int:
    """Graph breaks dynamo has counted in this process so far."""
    from torch._dynamo.utils import counters
    return sum(counters['graph_break'].values())
