# Swin-T-PRepBN (Swin-T, window 7, PRepBN norms), ImageNet-1k classification
# (release: swin_tiny_prepbn.pth, 81.4 top-1).
#
# SLAB-Swin-T's config (slab_swin_tiny.py: the release's recipe) with what differs:
# softmax window attention in every stage at window 7, the drop path
# (cfgs/swin_t_prepbn.yaml) and the PRepBN decay.
#   mim train mmpretrain configs/cls/swin_tiny_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/swin_tiny_prepbn.py --checkpoint swin_tiny_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/swin_tiny_prepbn.pth).  # noqa: E501
_base_ = './slab_swin_tiny.py'

model = dict(backbone=dict(attn_types='SSSS', window_sizes=7, drop_path_rate=0.1))

# PRepBN, LayerNorm -> RepBN: the release decays lam over 300000 forward calls of each norm
# (Swin-PRepBN: the default step, its swin_transformer.py sets none), counted per GPU
# process at 128 images per GPU on 8 GPUs: 300000 iterations of 1024 images (307.2M
# images, 239.78 ImageNet epochs) = 300000 iterations of this config's batch (128 x 8
# GPUs). With another total batch B: round(307200000 / B).
# custom_hooks is a list: restated whole (ReleaseCheckpointHook first, custom_hooks.0).
custom_hooks = [
    dict(type='ReleaseCheckpointHook'),
    dict(type='PRepBNHook', r0=1.0, warmup_iters=0, decay_iters=300000),
]
