# PVT-T-PRepBN (PVT-T with PRepBN norms), ImageNet-1k classification
# (release: pvt_tiny_prepbn.pth, 76.0 top-1).
#
# SLAB-PVT-T's config (slab_pvt_tiny.py: the release's PVT recipe) with what differs:
# spatial-reduction softmax attention in every stage (cfgs/pvt_t_prepbn.yaml). Drop path,
# batch, lr, schedule, no grad clip and the PRepBN decay (300000 iterations of 128 x 8
# images) are SLAB-PVT-T's.
#   mim train mmpretrain configs/cls/pvt_tiny_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/pvt_tiny_prepbn.py --checkpoint pvt_tiny_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/pvt_tiny_prepbn.pth).  # noqa: E501
_base_ = './slab_pvt_tiny.py'

model = dict(backbone=dict(attn_types='SSSS', sr_ratios=(8, 4, 2, 1)))
