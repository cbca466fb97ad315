# SLAB-Swin-B, ImageNet-1k classification (the release trained it with batch 64 per GPU).
#
# SLAB-Swin-T's config (slab_swin_tiny.py: the release's recipe) with what differs: the
# arch, the drop path, the head's input width and the batch (cfgs/slab_swin_b.yaml), with
# the lr scaled to it.
#   mim train mmpretrain configs/cls/slab_swin_base.py --launcher pytorch --gpus 8
# The release has no weights for this model: this is its training config.
_base_ = './slab_swin_tiny.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1024))

train_dataloader = dict(batch_size=64)  # per GPU; the release trains on 8 GPUs

# AdamW lr 5e-4 x 512/512, warm-up 20 epochs from 5e-7 x 512/512, cosine to
# 5e-6 x 512/512 stepped per iteration (the release's timm scheduler), grad clip 5.0
# (SLAB-Swin-T's)
optim_wrapper = dict(optimizer=dict(lr=5e-4 * 512 / 512))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-6 * 512 / 512, by_epoch=True, begin=20,
         end=300, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=512)

# PRepBN: SLAB-Swin-T's PRepBNHook (decay_iters=60000). The release decays lam over 60000
# forward calls of each norm (SLAB-Swin), counted per GPU process at 64 images per GPU on
# 8 GPUs: 60000 iterations of 512 images (30.72M images, 23.98 ImageNet epochs) = 60000
# iterations of this config's batch (64 x 8 GPUs). With another total batch B:
# round(30720000 / B).
