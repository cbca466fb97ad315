"""End to end (slow, CI): SLAB-Swin through the real mmdet / mmseg / mmdeploy tool chain.

The flagship Mask R-CNN + SLAB-Swin-T config with a mini SLAB-Swin, trained once
(``det_swin_trained`` in conftest.py; its tests share this module, so one pytest-xdist
worker), then tested (mmdet's test loop in a Runner here) and taken through mmdeploy ->
ONNX Runtime (``_e2e.deploy_to_ort_and_check``);
the demo UperNet + SLAB-Swin through `mim train` / `mim test mmsegmentation` (mIoU); and a
stock mmdet RetinaNet with only its backbone swapped (an in-process Runner). Nothing is
mocked; accuracy is not asserted (a few iterations from scratch), metrics must exist and
lie in their range.
"""
import math
import os.path as osp

import pytest
from _e2e import (CLASSES, DEMO_SEG, IMAGE_SIZE, SWIN_MINI, SWIN_MINI_CHANNELS, TRAIN_ITERS,
                  check_coco_metrics, check_training_log, deploy_to_ort_and_check,
                  eval_metrics, load_ckpt, mim, runner_test, write_config)


@pytest.mark.slow
def test_mim_train_test_mask_rcnn_slab_swin(e2e_dir, det_swin_trained):
    """The flagship Mask R-CNN + SLAB-Swin-T config with a mini SLAB-Swin, from scratch:
    trained with mmdet's train.py, tested -> box / mask AP (`mim train` / `mim test mmdet`
    themselves: the SLAB-PVT run, tests/test_e2e.py)."""
    cfg, work_dir = det_swin_trained['cfg'], det_swin_trained['work_dir']
    records = check_training_log(work_dir, 1, TRAIN_ITERS)
    assert all(r['prepbn_lam'] == 0.0 for r in records)  # r0=0: pure RepBN
    ckpt = load_ckpt(det_swin_trained['ckpt'])
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    assert 'backbone.stages.3.blocks.1.attn.relative_position_bias_table' in ckpt['state_dict']

    test_dir = osp.join(e2e_dir, 'test_det_swin')
    metrics = runner_test(cfg, det_swin_trained['ckpt'], test_dir)
    check_coco_metrics(metrics)


@pytest.mark.slow
def test_mmdeploy_ort_slab_swin_mask_rcnn(e2e_dir, det_swin_trained):
    deploy_to_ort_and_check(e2e_dir, 'swin', det_swin_trained['cfg'], det_swin_trained['ckpt'])


@pytest.mark.slow
def test_mim_train_test_upernet_slab_swin(e2e_dir, ade_root):
    """`mim train mmsegmentation` + `mim test mmsegmentation` of the demo UperNet +
    SLAB-Swin config (mini) on the ADE-layout synthetic set: mIoU in [0, 100]."""
    cfg = write_config(
        osp.join(e2e_dir, 'upernet_slab_swin_mini.py'), DEMO_SEG, """
        crop_size = (image_size, image_size)
        model = dict(
            data_preprocessor=dict(size=crop_size),
            backbone=dict(pretrain_img_size=image_size, **backbone),
            decode_head=dict(in_channels=backbone_channels, channels=64),
            auxiliary_head=dict(in_channels=backbone_channels[2], channels=32))
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5),
                 keep_ratio=True),
            dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackSegInputs')
        ]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=crop_size, keep_ratio=True),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')
        ]
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(data_root=data_root, pipeline=train_pipeline))
        test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                               dataset=dict(data_root=data_root, pipeline=test_pipeline))
        val_dataloader = None
        val_evaluator = None
        val_cfg = None
        train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
        """, data_root=ade_root, image_size=IMAGE_SIZE, max_iters=TRAIN_ITERS,
        backbone=SWIN_MINI, backbone_channels=SWIN_MINI_CHANNELS)
    work_dir = osp.join(e2e_dir, 'work_seg_swin')
    mim('train', 'mmsegmentation', cfg, '--work-dir', work_dir,
        log_file=osp.join(e2e_dir, 'train_seg_swin.log'))
    records = check_training_log(work_dir, 1, TRAIN_ITERS)
    assert all(math.isfinite(r['decode.loss_ce']) for r in records)
    ckpt_file = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
    ckpt = load_ckpt(ckpt_file)
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    assert ckpt['meta']['dataset_meta']['classes'] == ('background', ) + CLASSES

    test_dir = osp.join(e2e_dir, 'test_seg_swin')
    mim('test', 'mmsegmentation', cfg, '--checkpoint', ckpt_file, '--work-dir', test_dir,
        log_file=osp.join(e2e_dir, 'test_seg_swin.log'))
    metrics = eval_metrics(test_dir)
    for k in ('mIoU', 'aAcc', 'mAcc'):
        assert isinstance(metrics[k], float) and 0.0 <= metrics[k] <= 100.0, (k, metrics)


@pytest.mark.slow
def test_backbone_swap_into_stock_retinanet(e2e_dir, coco_root):
    """A stock mmdet config with only its backbone replaced by SLABSwin (and the neck's
    in_channels) builds, trains a few iterations and evaluates (in-process Runner)."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.runner import Runner

    cfg_file = write_config(osp.join(e2e_dir, 'retinanet_slab_swin_mini.py'),
                            'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', """
        custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)
        model = dict(
            # --- the swap (the README recipe): the backbone and the neck's in_channels ---
            backbone=dict(_delete_=True, type='SLABSwin', init_cfg=None, **backbone),
            neck=dict(in_channels=backbone_channels,
                      # --- the rest: run on the synthetic set in seconds (narrower FPN
                      # and head, 4 classes, 128 px; score_thr 0 so that a 3-iteration
                      # model has detections to evaluate) ---
                      out_channels=64),
            bbox_head=dict(num_classes=len(classes), in_channels=64, feat_channels=64),
            test_cfg=dict(score_thr=0.0))
        metainfo = dict(classes=classes)
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs')
        ]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs',
                 meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
        ]
        train_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
        val_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
        test_evaluator = val_evaluator
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=max_iters)
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
        optim_wrapper = dict(clip_grad=dict(max_norm=10.0))
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(by_epoch=False, interval=max_iters))
        log_processor = dict(by_epoch=False)
        """, data_root=coco_root, image_size=IMAGE_SIZE, classes=CLASSES, max_iters=3,
                            backbone=SWIN_MINI, backbone_channels=SWIN_MINI_CHANNELS)
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = osp.join(e2e_dir, 'work_retinanet_swin')
    # only the backbone (and the neck's width) differ from the stock model
    stock = get_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    assert cfg.model.type == stock.model.type == 'RetinaNet'
    assert cfg.model.neck.type == stock.model.neck.type
    assert cfg.model.neck.start_level == stock.model.neck.start_level
    assert cfg.model.bbox_head.type == stock.model.bbox_head.type

    runner = Runner.from_cfg(cfg)
    runner.train()
    from mmslab.models import SLABSwin
    assert isinstance(runner.model.backbone, SLABSwin)
    check_training_log(cfg.work_dir, 1, 3)
    assert load_ckpt(osp.join(cfg.work_dir, 'iter_3.pth'))['meta']['iter'] == 3
    ap = runner.message_hub.get_scalar('val/coco/bbox_mAP').current()
    assert 0.0 <= ap <= 1.0
