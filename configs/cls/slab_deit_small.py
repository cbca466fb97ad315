# SLAB-DeiT-S, ImageNet-1k classification (release: slab_deit_small.pth, 80.0 top-1).
#
# SLAB-DeiT-T's config (slab_deit_tiny.py: the release's recipe) with what differs: the
# arch and the head's input width (cfgs/slab_deit_s.yaml). Drop path 0.0, batch, lr,
# schedule, grad clip and the PRepBN decay (the release's step 60000: 60000 iterations of
# 128 x 8 images) are SLAB-DeiT-T's.
#   mim train mmpretrain configs/cls/slab_deit_small.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/slab_deit_small.py --checkpoint slab_deit_small.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_deit_small.pth).  # noqa: E501
_base_ = './slab_deit_tiny.py'

model = dict(backbone=dict(arch='small'), head=dict(in_channels=384))
