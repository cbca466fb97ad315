# PVT-M-PRepBN (PVT-M with PRepBN norms), ImageNet-1k classification
# (release: pvt_medium_prepbn.pth, 81.7 top-1).
#
# SLAB-PVT-T's config (slab_pvt_tiny.py: the release's PVT recipe) with what differs:
# the arch, spatial-reduction softmax attention in every stage, the drop path and grad
# clip 1.0 (cfgs/pvt_m_prepbn.yaml). Batch, lr, schedule and the PRepBN decay (300000
# iterations of 128 x 8 images) are SLAB-PVT-T's.
#   mim train mmpretrain configs/cls/pvt_medium_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/pvt_medium_prepbn.py --checkpoint pvt_medium_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/pvt_medium_prepbn.pth).  # noqa: E501
_base_ = './slab_pvt_tiny.py'

model = dict(
    backbone=dict(arch='medium', attn_types='SSSS', sr_ratios=(8, 4, 2, 1), drop_path_rate=0.3))

optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
