"""Every config under configs/ parses (mmdet::/mmseg::/mmpretrain:: bases resolved) and
builds."""
import ast
import copy
import functools
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
CLS_DIR = osp.join(CONFIG_DIR, 'cls')
RELEASE = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/'

PVT_T = [64, 128, 320, 512]
SWIN_T = [96, 192, 384, 768]
# config -> (scope, backbone type, released ImageNet file or None, backbone channels)
EXPECTED = {
    'mask_rcnn_slab_pvt.py': ('mmdet', 'SLABPVT', 'slab_pvt_tiny.pth', PVT_T),
    'mask_rcnn_pvt_prepbn_s.py': ('mmdet', 'SLABPVT', 'pvt_small_prepbn.pth', PVT_T),
    'mask_rcnn_slab_swin_t_1x.py': ('mmdet', 'SLABSwin', 'slab_swin_tiny.pth', SWIN_T),
    'mask_rcnn_slab_swin_t_3x_ms.py':
    ('mmdet', 'SLABSwin', 'slab_swin_tiny.pth', SWIN_T),
    'mask_rcnn_slab_swin_s_1x.py': ('mmdet', 'SLABSwin', 'slab_swin_small.pth', SWIN_T),
    'mask_rcnn_slab_swin_s_3x_ms.py':
    ('mmdet', 'SLABSwin', 'slab_swin_small.pth', SWIN_T),
    'mask_rcnn_swin_prepbn_t_1x.py':
    ('mmdet', 'SLABSwin', 'swin_tiny_prepbn.pth', SWIN_T),
    'upernet_slab_swin_t_ade20k_512x512_160k.py':
    ('mmseg', 'SLABSwin', 'slab_swin_tiny.pth', SWIN_T),
    'upernet_slab_swin_s_ade20k_512x512_160k.py':
    ('mmseg', 'SLABSwin', 'slab_swin_small.pth', SWIN_T),
    'upernet_slab_pvt_t_ade20k_512x512_160k.py':
    ('mmseg', 'SLABPVT', 'slab_pvt_tiny.pth', PVT_T),
    'demo/mask_rcnn_slab_pvt_demo.py': ('mmdet', 'SLABPVT', None, [32, 64, 128, 256]),
    'demo/upernet_slab_swin_demo.py': ('mmseg', 'SLABSwin', None, [32, 64, 128, 256]),
    # the PRepBN study's base (tools/prepbn_study.py sets the backbone per variant): the
    # detection demo with the study's schedule and lighter RoI heads
    'study/prepbn_study_base.py': ('mmdet', 'SLABPVT', None, [32, 64, 128, 256]),
}
# from-scratch configs -> PRepBNHook decay_iters: the detection demo (and the study base,
# which inherits it) with the PRepBN study's from-scratch init and schedule (README)
FROM_SCRATCH_DECAY = {'demo/mask_rcnn_slab_pvt_demo.py': 0.5,
                      'demo/upernet_slab_swin_demo.py': 0.8,
                      'study/prepbn_study_base.py': 0.5}
SCRATCH_RECIPE = dict(type='SLABScratch', linear='mmdet_pvt', repbn_alpha=0.0)
# backbone architecture each config must build (checked on the built module)
ARCH = {
    'mask_rcnn_slab_pvt.py': dict(depths=[2, 2, 2, 2], attn_types='LLLL'),
    'mask_rcnn_pvt_prepbn_s.py': dict(depths=[3, 4, 6, 3], attn_types='SSSS'),
    'mask_rcnn_slab_swin_t_1x.py': dict(depths=[2, 2, 6, 2], attn_types='LLSS'),
    'mask_rcnn_slab_swin_s_1x.py': dict(depths=[2, 2, 18, 2], attn_types='LLSS'),
    'mask_rcnn_swin_prepbn_t_1x.py': dict(depths=[2, 2, 6, 2], attn_types='SSSS'),
    'upernet_slab_swin_s_ade20k_512x512_160k.py': dict(depths=[2, 2, 18, 2]),
    'upernet_slab_pvt_t_ade20k_512x512_160k.py':
    dict(depths=[2, 2, 2, 2], attn_types='LLLL'),
}


def _all_configs():
    """Every SLAB model config, configs/demo/ and configs/study/ included (configs/mmdeploy/
    holds mmdeploy deploy configs, exercised by tests/test_e2e.py and test_e2e_swin.py;
    configs/prepbn/, stock models with PRepBN norms, are checked by
    test_prepbn_configs_change_only_the_norm; configs/cls/, the mmpretrain classifiers, by
    test_classifier_config)."""
    return sorted(
        rel for rel in (osp.relpath(p, CONFIG_DIR)
                        for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
        if not rel.startswith(('mmdeploy' + osp.sep, 'prepbn' + osp.sep, 'cls' + osp.sep)))


@functools.lru_cache(maxsize=None)
def _load(rel):
    """The parsed config, parsed once per session and shared: the tests only read it
    (what they build or change is a deep copy)."""
    return Config.fromfile(osp.join(CONFIG_DIR, rel))


def _registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return MODELS


def _build(cfg, scope):
    """Build cfg.model without downloading: the backbone's init_cfg is dropped."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    return _registry(scope).build(model_cfg)


def test_every_config_is_covered():
    assert _all_configs() == sorted(EXPECTED)
    found = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, 'prepbn', '*.py')))
    assert found == sorted(PREPBN)


# configs/prepbn/: stock model configs with PRepBN norms -> (scope, the stock config, the
# path of the norm_cfg that changed, the extra changes of the recipe)
PREPBN = {
    'mask_rcnn_pvtv2_b0_prepbn_fpn_1x_coco.py':
    ('mmdet', 'mmdet::pvt/retinanet_pvtv2-b0_fpn_1x_coco.py', 'backbone'),
    'deformable_detr_prepbn_encoder_r50_16xb2_50e_coco.py':
    ('mmdet', 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
     'encoder.layer_cfg'),
    'segformer_mit-b0_prepbn_8xb2-160k_ade20k-512x512.py':
    ('mmseg', 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', 'backbone'),
}


@pytest.mark.parametrize('rel', sorted(PREPBN))
def test_prepbn_configs_change_only_the_norm(rel):
    """The PRepBN config's model is the stock one with PRepBN where the stock one has
    LayerNorm (same backbone / encoder settings, same init_cfg), the LN -> RepBN schedule
    over half the run; every LayerNorm of the stock part is a PRepBN in the built model."""
    from mmslab.prepbn import PRepBN
    scope, stock_rel, path = PREPBN[rel]
    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'prepbn', rel))
    from mmengine.hub import get_config
    stock = get_config(stock_rel)
    assert cfg.custom_imports == dict(imports=['mmslab'], allow_failed_imports=False)
    assert [dict(h) for h in cfg.custom_hooks] == [dict(type='PRepBNHook', r0=1.0,
                                                        decay_iters=0.5)]
    ours, theirs = cfg.model, stock.model
    for key in path.split('.'):
        ours, theirs = ours[key], theirs[key]
    assert ours.norm_cfg.type == 'PRepBN'
    assert {k: v for k, v in ours.items() if k != 'norm_cfg'} == \
        {k: v for k, v in theirs.items() if k != 'norm_cfg'}
    model_cfg = copy.deepcopy(cfg.model)
    stock_cfg = copy.deepcopy(stock.model)
    for c in (model_cfg, stock_cfg):
        c.backbone.init_cfg = None
    model = _registry(scope).build(model_cfg)
    stock_model = _registry(scope).build(stock_cfg)
    part = model.get_submodule(path.split('.')[0])
    stock_part = stock_model.get_submodule(path.split('.')[0])
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in stock_part.modules())
    assert n_ln > 0
    assert sum(isinstance(m, PRepBN) for m in part.modules()) == n_ln
    for name, ln in stock_part.named_modules():  # same place, same LayerNorm eps
        if isinstance(ln, torch.nn.LayerNorm):
            norm = part.get_submodule(name)
            assert isinstance(norm, PRepBN) and norm.norm1.eps == ln.eps, name


@pytest.mark.parametrize('rel', sorted(EXPECTED))
def test_config_parses_and_builds(rel):
    scope, bb_type, ckpt, channels = EXPECTED[rel]
    cfg = _load(rel)
    assert cfg.default_scope == scope
    assert cfg.custom_imports == dict(imports=['mmslab'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert bb.type == bb_type
    if ckpt is None:  # demos (and the study) train from scratch with the LN -> BN schedule
        # detection: the PRepBN study's from-scratch init (README)
        assert bb.init_cfg == (SCRATCH_RECIPE if scope == 'mmdet' else None)
        assert bb.norm_eval is False
        hooks = [h for h in cfg.custom_hooks if h.type == 'PRepBNHook']
        decay = FROM_SCRATCH_DECAY[rel]
        assert len(hooks) == 1 and hooks[0].r0 == 1.0 and hooks[0].decay_iters == decay
    else:  # fine-tuning a released ImageNet checkpoint: pure RepBN, BN frozen
        assert bb.init_cfg == dict(type='Pretrained', checkpoint=RELEASE + ckpt)
        assert bb.norm_eval is True
        hooks = [h for h in cfg.custom_hooks if h.type == 'PRepBNHook']
        assert len(hooks) == 1 and hooks[0].r0 == 0.0
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    # the hook config builds
    from mmengine.registry import HOOKS
    HOOKS.build(copy.deepcopy(hooks[0]))

    model = _build(cfg, scope)
    backbone = model.backbone
    assert type(backbone).__name__ == bb_type
    for key, value in ARCH.get(rel, {}).items():
        assert backbone.arch_settings[key] == value, (key, backbone.arch_settings)
    # the head's input channels are the backbone's real output channels
    if scope == 'mmdet':
        assert list(cfg.model.neck.in_channels) == channels
    else:
        assert list(cfg.model.decode_head.in_channels) == channels
        assert cfg.model.auxiliary_head.in_channels == channels[
            cfg.model.auxiliary_head.in_index]
    backbone.eval()
    with torch.no_grad():
        outs = backbone(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == channels
    assert [tuple(o.shape[2:]) for o in outs] == [(64 // s, 96 // s)
                                                  for s in (4, 8, 16, 32)]


def test_flagship_backbone_and_neck():
    cfg = _load('mask_rcnn_slab_pvt.py')
    # stock COCO data and 1x schedule of mmdet
    assert cfg.train_dataloader.dataset.type == 'CocoDataset'
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.param_scheduler[-1].milestones == [8, 11]
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    model = _build(cfg, 'mmdet')
    assert model.backbone.arch_settings['embed_dims'] == PVT_T
    assert model.backbone.arch_settings['depths'] == [2, 2, 2, 2]
    assert model.roi_head.bbox_head.num_classes == 80
    model.eval()
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.rand(2, 3, 128, 160)))
    assert len(feats) == 5
    assert [tuple(f.shape) for f in feats] == [(2, 256, 128 // s, 160 // s)
                                              for s in (4, 8, 16, 32)] + [(2, 256, 2, 3)]

    # no weight decay on norms (LN weights/biases, RepBN alpha and BN affine) or on
    # position embeddings / SLA positional encodings; decay 0.05 on the rest
    from mmengine.optim import build_optim_wrapper
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    wd = {}
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            wd[id(p)] = group['weight_decay']
    names = dict(model.named_parameters())
    no_decay = [n for n in names if any(
        k in n for k in ('norm', '.alpha', 'pos_embed', 'positional_encoding'))]
    assert any('.alpha' in n for n in no_decay)
    assert any('positional_encoding' in n for n in no_decay)
    assert any('pos_embed' in n for n in no_decay)
    for n in no_decay:
        assert wd[id(names[n])] == 0.0, n
    for n in ('backbone.stages.0.blocks.0.attn.q.weight', 'neck.fpn_convs.0.conv.weight'):
        if n in names:
            assert wd[id(names[n])] == 0.05, n
    decayed = [n for n in names if wd[id(names[n])] == 0.05]
    assert any(n.startswith('backbone.') for n in decayed)


def test_swin_recipes():
    t1 = _load('mask_rcnn_slab_swin_t_1x.py')
    t3 = _load('mask_rcnn_slab_swin_t_3x_ms.py')
    s3 = _load('mask_rcnn_slab_swin_s_3x_ms.py')
    assert t1.train_cfg.max_epochs == 12 and t3.train_cfg.max_epochs == 36
    assert t3.param_scheduler[-1].milestones == [27, 33]
    for cfg in (t1, t3, s3):
        assert cfg.optim_wrapper.optimizer.lr == 1e-4
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        for k in ('norm', 'relative_position_bias_table', 'positional_encoding',
                  '.alpha'):
            assert keys[k].decay_mult == 0.0
        assert cfg.model.backbone.window_sizes == (56, 28, 7, 7)
    # multi-scale 480-800 training (with the DETR-style crop branch)
    for cfg in (t3, s3):
        choice = [t for t in cfg.train_dataloader.dataset.pipeline
                  if t.type == 'RandomChoice'][0]
        short = sorted({s[0] for branch in choice.transforms for t in branch
                        if t.type == 'RandomChoiceResize' for s in t.scales})
        assert short[0] == 400 and short[-1] == 800 and 480 in short
    assert s3.model.backbone.arch == 'small'
    assert s3.model.backbone.drop_path_rate == 0.3


def test_upernet_recipe():
    cfg = _load('upernet_slab_swin_t_ade20k_512x512_160k.py')
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.crop_size == (512, 512)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    pvt = _load('upernet_slab_pvt_t_ade20k_512x512_160k.py')
    assert pvt.optim_wrapper.paramwise_cfg.custom_keys['pos_embed'].decay_mult == 0.0


def test_demo_configs_settings():
    det = _load('demo/mask_rcnn_slab_pvt_demo.py')
    classes = ('circle', 'square', 'triangle', 'star')
    for loader in (det.train_dataloader, det.val_dataloader, det.test_dataloader):
        assert loader.dataset.metainfo['classes'] == classes
        assert loader.dataset.data_root == 'data/demo_coco/'
    assert det.val_evaluator.ann_file == 'data/demo_coco/annotations/instances_val2017.json'
    assert det.val_evaluator.metric == ['bbox', 'segm']
    assert det.model.roi_head.bbox_head.num_classes == 4
    assert det.model.roi_head.mask_head.num_classes == 4
    seg = _load('demo/upernet_slab_swin_demo.py')
    for loader in (seg.train_dataloader, seg.val_dataloader):
        assert loader.dataset.metainfo['classes'][0] == 'background'
        assert loader.dataset.reduce_zero_label is True
    assert seg.model.decode_head.num_classes == 5
    assert seg.model.auxiliary_head.num_classes == 5


# ------------------------------------------------------------------ configs/cls/

# configs/cls/: the mmpretrain classifiers of the released ImageNet models
# (docs/classification.md; their logits against the release: tests/test_classifiers.py).
# The release's recipe per config: (decay forward calls of each PRepBN, None: RepBN norms,
# no decay; images per GPU in the release's run on 8 GPUs, drop path, grad clip)
CLS_RELEASE = {
    'slab_swin_tiny': (60000, 128, 0.2, 5.0), 'slab_swin_small': (60000, 128, 0.3, 5.0),
    'slab_swin_base': (60000, 64, 0.5, 5.0), 'swin_tiny_prepbn': (300000, 128, 0.1, 5.0),
    'slab_pvt_tiny': (300000, 128, 0.0, None), 'pvt_tiny_prepbn': (300000, 128, 0.0, None),
    'pvt_small_prepbn': (300000, 64, 0.1, None), 'pvt_medium_prepbn': (300000, 128, 0.3, 1.0),
    # SLAB-DeiT: LinearNorm(step=60000); DeiT-S: LinearNorm's default step (the file's
    # total_step buffers); DeiT-T: RepBN
    'slab_deit_tiny': (60000, 128, 0.0, 5.0), 'slab_deit_small': (60000, 128, 0.0, 5.0),
    'deit_small_prepbn': (300000, 128, 0.0, 5.0), 'deit_tiny_prepbn': (None, 128, 0.0, 5.0),
}
# each family's full config (on mmpretrain's bases); its other configs inherit it
CLS_FAMILY = {'SLABSwin': 'slab_swin_tiny', 'SLABPVT': 'slab_pvt_tiny',
              'SLABDeiT': 'slab_deit_tiny'}
# narrowed structures (and the head's input width) the models are built with
CLS_NARROW = {
    'SLABSwin': (dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]), 128),
    'SLABPVT': (dict(embed_dims=[8, 16, 24, 32], num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2],
                     depths=[1, 1, 1, 1]), 32),
    'SLABDeiT': (dict(embed_dims=48, depth=2, num_heads=3), 48),
}
# the release's weight decay: off for 1-D parameters, biases and these (no_weight_decay,
# no_weight_decay_keywords of its model classes), on for every other parameter
CLS_NO_DECAY = {'SLABSwin': ('relative_position_bias_table', 'absolute_pos_embed'),
                'SLABPVT': ('cls_token', ),
                'SLABDeiT': ('backbone.pos_embed', 'backbone.cls_token')}


def _cls_bases(name):
    """The ``_base_`` a configs/cls file states, as written."""
    tree = ast.parse(open(osp.join(CLS_DIR, f'{name}.py')).read())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and node.targets[0].id == '_base_')


def test_every_released_classifier_has_a_config():
    assert sorted(osp.basename(f)[:-3] for f in glob.glob(osp.join(CLS_DIR, '*.py'))) == \
        sorted(CLS_RELEASE)


@pytest.mark.parametrize('name', sorted(CLS_RELEASE))
def test_classifier_config(name):
    """Parses with the mmpretrain:: bases resolved (a family's full config inherits them,
    its other configs inherit it), states the release's recipe (weight decay included),
    and its model builds (narrowed: the structure options are checked, not the widths) and
    classifies; its real head fits its real backbone."""
    import mmslab  # noqa: F401  (registers the SLAB modules)
    from mmslab.models import PVT_ARCHS, SWIN_ARCHS
    from mmslab.models.arch import DEIT_ARCHS
    cfg = _load(osp.join('cls', f'{name}.py'))
    backbone = cfg.model.backbone
    family = CLS_FAMILY[backbone.type]
    assert _cls_bases(name) == ([f'mmpretrain::_base_/{b}.py' for b in (
        'datasets/imagenet_bs64_swin_224', 'schedules/imagenet_bs1024_adamw_swin',
        'default_runtime')] if name == family else f'./{family}.py')
    step, per_gpu, drop_path, clip = CLS_RELEASE[name]
    assert cfg.custom_imports == dict(imports=['mmslab'], allow_failed_imports=False)
    assert cfg.train_dataloader.batch_size == per_gpu
    total = per_gpu * 8
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-4 * total / 512)
    assert cfg.auto_scale_lr.base_batch_size == total
    assert cfg.optim_wrapper.get('clip_grad') == (None if clip is None else dict(max_norm=clip))
    assert all(s.get('convert_to_iter_based') for s in cfg.param_scheduler)
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert cfg.custom_hooks[0]['type'] == 'ReleaseCheckpointHook'
    if step is None:  # RepBN norms: no lam to decay
        assert backbone.norm == 'RepBN' and list(hooks) == ['ReleaseCheckpointHook']
    else:
        # the release's step counts forward calls of per_gpu images on each of 8 GPUs: the
        # same number of iterations of this config's batch (per_gpu x 8)
        assert hooks['PRepBNHook']['decay_iters'] == step * per_gpu * 8 // (
            cfg.train_dataloader.batch_size * 8)
        assert hooks['PRepBNHook']['r0'] == 1.0 and hooks['PRepBNHook']['warmup_iters'] == 0
    assert backbone.drop_path_rate == drop_path and backbone.norm_eval is False
    if backbone.type == 'SLABDeiT':
        assert cfg.model.neck is None and backbone.get('out_indices', -1) == -1
        assert backbone.out_type == ('avg_featmap' if backbone.attention == 'sla'
                                     else 'cls_token')
        widths = [DEIT_ARCHS[backbone.arch].embed_dims]
    else:
        assert tuple(backbone.out_indices) == (3, )
        widths = (SWIN_ARCHS[backbone.arch].widths if backbone.type == 'SLABSwin'
                  else PVT_ARCHS[backbone.arch].embed_dims)
    assert cfg.model.head.in_channels == widths[-1]
    if backbone.type == 'SLABSwin':
        assert backbone.final_norm and backbone.clamp_windows

    arch, channels = CLS_NARROW[backbone.type]
    model_cfg = copy.deepcopy(cfg.model.to_dict())
    model_cfg['backbone']['arch'] = arch
    model_cfg['head']['in_channels'] = channels
    init_default_scope(cfg.default_scope)
    model = MODELS.build(model_cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert out.shape == (1, 1000)
    # weight decay where the release's set_weight_decay puts it
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g['weight_decay'] for g in build_optim_wrapper(
        model, copy.deepcopy(cfg.optim_wrapper)).optimizer.param_groups for p in g['params']}
    assert set(decay) == set(names.values())
    assert {n for n, wd in decay.items() if wd == 0} == {
        n for n, p in model.named_parameters()
        if p.ndim == 1 or n.endswith('.bias') or any(k in n for k in CLS_NO_DECAY[backbone.type])}
    assert set(decay.values()) == {0.0, 0.05}
