# Mask R-CNN + FPN with a SLAB-PVT-T backbone (Simplified Linear Attention +
# Progressive Re-parameterized BatchNorm), COCO instance segmentation, 1x schedule.
#
# Recipe of the SLAB release for detection: the ImageNet-pretrained backbone
# (slab_pvt_tiny.pth, 76.5 top-1), AdamW lr 1e-4 / weight decay 0.05 without decay on
# norms and position encodings, 12 epochs with steps at 8 and 11 (mmdet's 1x), batch
# 16 (8 GPUs x 2 images). The released checkpoint is converged, so the norms are pure
# RepBN from the first iteration (PRepBNHook r0=0.0) and RepBN's BatchNorm stays in
# eval mode (norm_eval=True), as in the release's detection code.
#
#   mim train mmdet configs/mask_rcnn_slab_pvt.py                      # 1 GPU
#   mim train mmdet configs/mask_rcnn_slab_pvt.py --launcher pytorch --gpus 8
#
# COCO is read from mmdet's usual data/coco/ (annotations/instances_*2017.json,
# train2017/, val2017/). No result of this config on COCO has been measured here.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_pvt_tiny.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABPVT',
        arch='tiny',  # embed_dims [64, 128, 320, 512], depths [2, 2, 2, 2]
        attn_types='LLLL',  # SLA in every stage
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))

# AdamW, no weight decay on norms (LayerNorm / RepBN incl. its alpha), position
# embeddings and SLA's positional encodings.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=0.0001,
        betas=(0.9, 0.999),
        weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.),
            '.alpha': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'positional_encoding': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
        }))

# Fine-tuning a converged checkpoint: lam = 0 throughout (pure RepBN).
custom_hooks = [dict(type='PRepBNHook', r0=0.0)]

# Multi-GPU training from scratch or with norm_eval=False: convert RepBN's BatchNorm to
# SyncBatchNorm with
# sync_bn = 'torch'
