# DeiT-S-PRepBN (DeiT-S with PRepBN norms), ImageNet-1k classification
# (release: deit_small_prepbn.pth, 80.2 top-1).
#
# SLAB-DeiT-T's config (slab_deit_tiny.py: the release's recipe) with what differs: the
# arch, DeiT's softmax attention with its class token, which the head reads, the head's
# input width and the PRepBN decay (cfgs/deit_s_prepbn.yaml builds deit.py's
# deit_small_patch16_224_repbn: LinearNorm norms, the default step). Drop path 0.0,
# batch, lr, schedule and grad clip are SLAB-DeiT-T's.
#   mim train mmpretrain configs/cls/deit_small_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/deit_small_prepbn.py --checkpoint deit_small_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/deit_small_prepbn.pth).  # noqa: E501
_base_ = './slab_deit_tiny.py'

model = dict(
    backbone=dict(arch='small', attention='softmax', out_type='cls_token'),
    head=dict(in_channels=384))

# PRepBN, LayerNorm -> RepBN: the release's deit.py builds LinearNorm with the default
# step, 300000 forward calls of each norm (the file's total_step buffers read 300000),
# counted per GPU process at 128 images per GPU on 8 GPUs: 300000 iterations of 1024
# images (307.2M images, 239.78 ImageNet epochs) = 300000 iterations of this config's
# batch (128 x 8 GPUs). With another total batch B: round(307200000 / B).
# custom_hooks is a list: restated whole (ReleaseCheckpointHook first, custom_hooks.0).
custom_hooks = [
    dict(type='ReleaseCheckpointHook'),
    dict(type='PRepBNHook', r0=1.0, warmup_iters=0, decay_iters=300000),
]
