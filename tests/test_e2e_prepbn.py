"""The configs/prepbn/ recipes end to end, on narrow variants and the synthetic sets (slow,
CI): stock mmdet PVTv2 Mask R-CNN, Deformable DETR with a PRepBN encoder, mmseg SegFormer
(MiT). Each:

* loads a LayerNorm model's weights -- the backbone file through the backbone's usual
  ``init_cfg`` (PVTv2, MiT), the whole detector through mmengine's ``load_checkpoint``
  (what ``load_from`` runs) -- and then computes, at ``lam = 1``, exactly what the
  LayerNorm model computes on real images (float64, mode ``'tensor'``);
* trains in a real mmengine Runner from that file with the config's PRepBNHook (lam 1 ->
  0 over half the run), re-estimates the BatchNorm statistics (``recalibrate_checkpoint``,
  the release's post-training pass: after 4 iterations the running statistics are still
  mostly their initial values, an eval model badly conditioned for float32), and tests
  (CocoMetric / mIoU);
* folds with ``deploy_checkpoint`` (every norm its affine map), whose config loads the
  folded file strictly and tests to the same metrics;
* exports the folded backbone to ONNX, checked in ONNX Runtime (PVTv2, MiT: at the export
  size, as their LayerNorm originals; the DETR's PRepBNs are in its encoder, which no tool
  here exports alone).
"""
import copy
import os.path as osp

import pytest
import torch
from _e2e import CLASSES, IMAGE_SIZE, TRAIN_ITERS, write_config
from _tolerance import EXACT, assert_rel_close

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PREPBN_CONFIGS = osp.join(ROOT, 'configs', 'prepbn')

DET_PIPELINES = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=with_mask),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(shuffle=False),
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 filter_cfg=dict(filter_empty_gt=True, min_size=0),
                 pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
"""
RUN = """
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
"""
PVTV2_BODY = """
model = dict(
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 5, 8],
                  convert_weights=False, init_cfg=dict(checkpoint=backbone_file)),
    neck=dict(in_channels=[16, 32, 80, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32,
                       num_classes=len(classes))),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)),
                   rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=20)))
""" + DET_PIPELINES + RUN
DETR_BODY = """
model = dict(
    num_queries=20,
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[128, 256, 512], out_channels=32),
    encoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=32, num_heads=4),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
    decoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=32, num_heads=4),
        cross_attn_cfg=dict(embed_dims=32, num_heads=4),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
    positional_encoding=dict(num_feats=16),
    bbox_head=dict(num_classes=len(classes), embed_dims=32),
    test_cfg=dict(max_per_img=20))
""" + DET_PIPELINES + RUN
SEG_BODY = """
classes = ('background', ) + classes
metainfo = dict(classes=classes, palette=[(i * 40, 255 - i * 40, 90) for i in range(5)])
crop_size = (image_size, image_size)
norm_cfg = dict(type='BN', requires_grad=True)  # one process: no SyncBN
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                  init_cfg=dict(type='Pretrained', checkpoint=backbone_file)),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, norm_cfg=norm_cfg,
                     num_classes=len(classes)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
               data_prefix=dict(img_path='images/validation',
                                seg_map_path='annotations/validation'))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(shuffle=False), dataset=dict(
                            dataset, pipeline=train_pipeline,
                            data_prefix=dict(img_path='images/training',
                                             seg_map_path='annotations/training')))
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                       dataset=dict(dataset, pipeline=test_pipeline))
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
"""
# config -> (scope, body, the part that holds the LayerNorms, metric keys, export)
CASES = {
    'pvtv2_mask_rcnn': ('mask_rcnn_pvtv2_b0_prepbn_fpn_1x_coco.py', 'mmdet', PVTV2_BODY,
                        'backbone', ('coco/bbox_mAP', 'coco/segm_mAP'), True),
    'deformable_detr': ('deformable_detr_prepbn_encoder_r50_16xb2_50e_coco.py', 'mmdet',
                        DETR_BODY, 'encoder', ('coco/bbox_mAP', ), False),
    'segformer_mit': ('segformer_mit-b0_prepbn_8xb2-160k_ade20k-512x512.py', 'mmseg',
                      SEG_BODY, 'backbone', ('mIoU', 'aAcc'), True),
}


def _layernorm_cfg(cfg, part):
    """The same config with the stock LayerNorm where the PRepBN config has PRepBN."""
    ln = copy.deepcopy(cfg)
    node = ln.model.encoder.layer_cfg if part == 'encoder' else ln.model.backbone
    node.norm_cfg = dict(type='LN', eps=node.norm_cfg.get('eps', 1e-5))
    return ln


def _build(cfg, scope):
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    return MODELS.build(copy.deepcopy(cfg.model))


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    return []


def _real_batch(cfg, scope):
    """Two preprocessed validation images of the synthetic set (the test pipeline)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(scope)
    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    return pseudo_collate([dataset[0], dataset[1]])


def _unique(cfg, work_dir):
    cfg.work_dir = work_dir
    cfg.experiment_name = 'prepbn_' + osp.basename(work_dir)
    cfg.visualizer.name = 'vis_' + cfg.experiment_name  # mmengine reuses named instances
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(CASES))
def test_prepbn_config_loads_layernorm_weights_trains_tests_folds_exports(
        case, tmp_path, coco_root, ade_root):
    from mmengine.config import Config
    from mmengine.runner import Runner, load_checkpoint

    from mmslab.deploy import deploy_checkpoint
    from mmslab.onnx_export import export_backbone, load_backbone
    from mmslab.prepbn import PRepBN
    from mmslab.prepbn.recalibration import recalibrate_checkpoint

    rel, scope, body, part, metric_keys, export = CASES[case]
    data_root = ade_root if scope == 'mmseg' else coco_root
    backbone_file = str(tmp_path / 'ln_backbone.pth')
    cfg_file = write_config(
        tmp_path / f'{case}_mini.py', osp.join(PREPBN_CONFIGS, rel), body,
        data_root=data_root, image_size=IMAGE_SIZE, classes=CLASSES,
        max_iters=TRAIN_ITERS, with_mask=case == 'pvtv2_mask_rcnn',
        backbone_file=backbone_file)
    cfg = Config.fromfile(cfg_file)

    # --- the "pretrained" LayerNorm model: the stock one with random LayerNorm affines
    torch.manual_seed(0)
    ln_cfg = _layernorm_cfg(cfg, part)
    ln_cfg.model.backbone.init_cfg = None
    ln_model = _build(ln_cfg, scope)
    ln_model.init_weights()  # (Deformable DETR's level_embed is allocated uninitialised)
    ln_model.double()
    with torch.no_grad():
        for m in ln_model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    torch.save({'state_dict': ln_model.backbone.state_dict()}, backbone_file)
    whole_file = str(tmp_path / 'ln_model.pth')
    torch.save({'state_dict': ln_model.state_dict(), 'meta': {}}, whole_file)

    # --- function: LayerNorm weights in, lam = 1, the LayerNorm model's outputs (float64)
    model = _build(cfg, scope).double()
    if part == 'backbone':  # the backbone's own init_cfg path (mmdet / mmseg code)
        model.backbone.init_weights()
        norms = [m for m in model.backbone.modules() if isinstance(m, PRepBN)]
        assert norms and all(float(m.lam) == 1.0 for m in norms)
    load_checkpoint(model, whole_file, map_location='cpu', strict=True)  # load_from's path
    norms = [m for m in model.modules() if isinstance(m, PRepBN)]
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in ln_model.get_submodule(part).modules())
    assert len(norms) == n_ln and all(float(m.lam) == 1.0 for m in norms)
    model.eval()
    ln_model.eval()
    data = model.data_preprocessor(_real_batch(cfg, scope), False)
    data['inputs'] = data['inputs'].double()
    with torch.no_grad():  # (mmcv's CPU NMS has no float64: Mask R-CNN up to its RPN)
        if case == 'pvtv2_mask_rcnn':
            ours = _flatten(model.extract_feat(data['inputs']))
            theirs = _flatten(ln_model.extract_feat(data['inputs']))
        else:
            ours = _flatten(model(**data, mode='tensor'))
            theirs = _flatten(ln_model(**data, mode='tensor'))
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert_rel_close(a, b, EXACT)
    del model, ln_model

    # --- train (the config's PRepBNHook: lam 1 -> 0 over half the run) and test
    runner = Runner.from_cfg(_unique(cfg, str(tmp_path / 'work')))
    runner.train()
    lams = {float(m.lam) for m in runner.model.modules() if isinstance(m, PRepBN)}
    assert lams == {0.0}
    ckpt = str(tmp_path / 'work' / f'iter_{TRAIN_ITERS}.pth')
    assert osp.isfile(ckpt)
    # the post-training BatchNorm statistics pass (tools/recalibrate_bn.py), then test
    recal = recalibrate_checkpoint(cfg_file, ckpt, iters=4, out=str(tmp_path / 'recal.pth'))
    recal_cfg = Config.fromfile(cfg_file)
    recal_cfg.load_from = recal
    runner = Runner.from_cfg(_unique(recal_cfg, str(tmp_path / 'work_recal')))
    metrics = runner.test()
    for k in metric_keys:
        assert 0.0 <= metrics[k] <= (100.0 if scope == 'mmseg' else 1.0), (k, metrics)

    # --- fold, and the folded config: strict load, the same metrics
    folded = str(tmp_path / 'folded' / 'folded.pth')
    err = deploy_checkpoint(cfg_file, recal, folded, img_shape=(IMAGE_SIZE, IMAGE_SIZE))
    # float64 features of the trained vs the folded model, whose affine maps are rounded to
    # float32 (the fold itself is exact: tests/test_prepbn_convert.py, float64)
    assert err <= 1e-4
    folded_cfg_file = osp.splitext(folded)[0] + '_config.py'
    folded_cfg = Config.fromfile(folded_cfg_file)
    folded_runner = Runner.from_cfg(_unique(folded_cfg, str(tmp_path / 'work_folded')))
    folded_metrics = folded_runner.test()
    tol = 0.02 if scope == 'mmseg' else 0.002  # mIoU in %, AP in [0, 1]: rounding, ties
    for k in metric_keys:
        assert folded_metrics[k] == pytest.approx(metrics[k], abs=tol), k
    assert not any(isinstance(m, PRepBN) and not m.deploy for m in folded_runner.model.modules())

    # --- ONNX of the folded backbone, checked in ONNX Runtime
    if export:
        backbone = load_backbone(config=folded_cfg_file, checkpoint=folded)
        # TorchScript, at one size: the stock modules' nn.MultiheadAttention traces to fixed
        # shapes, and torch.export specialises their reduced maps (their LayerNorm originals
        # as much: docs/prepbn.md)
        shape = (1, 3, IMAGE_SIZE, IMAGE_SIZE + 32)
        report = export_backbone(backbone, str(tmp_path / 'backbone.onnx'), shape=shape,
                                 check_shapes=[shape], fold=False, exporter='torchscript')
        assert report.passed and report.max_rel_error <= 1e-4, report.table()
        assert osp.isfile(tmp_path / 'backbone.onnx')
