# UperNet with SLAB-Swin-T (attention 'LLSS', windows 56 / 28 / 7 / 7) on ADE20K,
# 512x512 crops, 160k iterations, batch 16 (8 GPUs x 2).
#
# mmseg's Swin-T UperNet recipe (AdamW lr 6e-5, wd 0.01, no decay on norms / position
# encodings, 1500-iter warmup then poly decay, drop path 0.3) with the backbone swapped
# for the release's SLAB-Swin-T (slab_swin_tiny.pth). The SLAB release has no
# segmentation code or results; this transfers mmseg's Swin recipe unchanged.
# PRepBNHook r0=0.0: pure RepBN (converged checkpoint), RepBN's BatchNorm in eval mode.
#
#   mim train mmsegmentation configs/upernet_slab_swin_t_ade20k_512x512_160k.py
#
# ADE20K is read from mmseg's usual data/ade/ADEChallengeData2016/.
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa: E501
]

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_tiny.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABSwin',
        arch='tiny',
        attn_types='LLSS',
        window_sizes=(56, 28, 7, 7),
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'positional_encoding': dict(decay_mult=0.),
            '.alpha': dict(decay_mult=0.),
        }))

custom_hooks = [dict(type='PRepBNHook', r0=0.0)]

# The decode heads use SyncBN (mmseg's default); with norm_eval=False also convert
# RepBN's BatchNorm for multi-GPU training:
# sync_bn = 'torch'
