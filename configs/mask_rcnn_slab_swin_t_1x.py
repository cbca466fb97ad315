# Mask R-CNN + FPN with SLAB-Swin-T (attention 'LLSS': SLA in stages 1-2 with windows
# 56 / 28, Swin window attention in stages 3-4 with window 7), COCO, 1x schedule.
#
# Stock mmdet Swin-T 1x recipe (AdamW lr 1e-4, wd 0.05, 1000-iter warmup, steps 8 / 11,
# single-scale 1333x800) with the backbone swapped for the release's SLAB-Swin-T
# (slab_swin_tiny.pth, 81.8 top-1). PRepBNHook r0=0.0: pure RepBN (converged
# checkpoint); norm_eval=True keeps RepBN's BatchNorm in eval mode, as in the release.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_tiny.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABSwin',
        arch='tiny',  # embed 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24]
        attn_types='LLSS',
        window_sizes=(56, 28, 7, 7),
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# the stock keys (absolute_pos_embed, relative_position_bias_table, norm) plus SLA's
# positional encodings and RepBN's alpha: no weight decay
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'positional_encoding': dict(decay_mult=0.),
            '.alpha': dict(decay_mult=0.),
        }))

custom_hooks = [dict(type='PRepBNHook', r0=0.0)]

# Multi-GPU training with norm_eval=False: convert RepBN's BatchNorm to SyncBatchNorm
# sync_bn = 'torch'
