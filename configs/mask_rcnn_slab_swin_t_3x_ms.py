# Mask R-CNN + FPN with SLAB-Swin-T, COCO, 3x schedule with multi-scale training.
#
# The release's detection recipe for SLAB-Swin: multi-scale 480-800 training with the
# DETR-style random crop (mmdet's swin "ms-crop-3x" pipeline), AdamW lr 1e-4, wd 0.05,
# 36 epochs with steps at 27 / 33. Stock mmdet config with the backbone swapped for
# SLAB-Swin-T (slab_swin_tiny.pth). For mixed precision add
# optim_wrapper = dict(type='AmpOptimWrapper') (SLA itself always runs in float32).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_tiny.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABSwin',
        arch='tiny',
        attn_types='LLSS',
        window_sizes=(56, 28, 7, 7),
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'positional_encoding': dict(decay_mult=0.),
            '.alpha': dict(decay_mult=0.),
        }))

custom_hooks = [dict(type='PRepBNHook', r0=0.0)]

# Multi-GPU training with norm_eval=False: convert RepBN's BatchNorm to SyncBatchNorm
# sync_bn = 'torch'
