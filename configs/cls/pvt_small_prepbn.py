# PVT-S-PRepBN (PVT-S with PRepBN norms), ImageNet-1k classification
# (release: pvt_small_prepbn.pth, 80.1 top-1; the release trained it with batch 64 per GPU).
#
# SLAB-PVT-T's config (slab_pvt_tiny.py: the release's PVT recipe) with what differs:
# the arch, spatial-reduction softmax attention in every stage, the drop path and the
# batch (cfgs/pvt_s_prepbn.yaml), with the lr scaled to it.
#   mim train mmpretrain configs/cls/pvt_small_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/pvt_small_prepbn.py --checkpoint pvt_small_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/pvt_small_prepbn.pth).  # noqa: E501
_base_ = './slab_pvt_tiny.py'

model = dict(
    backbone=dict(arch='small', attn_types='SSSS', sr_ratios=(8, 4, 2, 1), drop_path_rate=0.1))

train_dataloader = dict(batch_size=64)  # per GPU; the release trains on 8 GPUs

# AdamW lr 5e-4 x 512/512, warm-up 5 epochs from 1e-6 x 512/512, cosine to
# 1e-5 x 512/512 stepped per iteration until epoch 300, then 10 cool-down epochs at
# that minimum (SLAB-PVT-T's max_epochs=310), no grad clip
optim_wrapper = dict(optimizer=dict(lr=5e-4 * 512 / 512))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 5e-4, by_epoch=True, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5 * 512 / 512, by_epoch=True, begin=5,
         end=300, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=512)

# PRepBN: SLAB-PVT-T's PRepBNHook (decay_iters=300000). The release decays lam over 300000
# forward calls of each norm (PVT), counted per GPU process at 64 images per GPU on 8
# GPUs: 300000 iterations of 512 images (153.6M images, 119.89 ImageNet epochs) = 300000
# iterations of this config's batch (64 x 8 GPUs). With another total batch B:
# round(153600000 / B).
