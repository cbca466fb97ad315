# SLAB-Swin-S, ImageNet-1k classification (release: slab_swin_small.pth, 83.6 top-1).
#
# SLAB-Swin-T's config (slab_swin_tiny.py: the release's recipe) with what differs: the
# arch and the drop path (cfgs/slab_swin_s.yaml). Batch, lr, schedule, grad clip and the
# PRepBN decay (60000 iterations of 128 x 8 images) are SLAB-Swin-T's.
#   mim train mmpretrain configs/cls/slab_swin_small.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/slab_swin_small.py --checkpoint slab_swin_small.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_small.pth).  # noqa: E501
_base_ = './slab_swin_tiny.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
