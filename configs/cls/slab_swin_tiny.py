# SLAB-Swin-T, ImageNet-1k classification (release: slab_swin_tiny.pth, 81.8 top-1).
#
# The SLAB release's ImageNet recipe on mmpretrain's ImageNet bases: stated here is only
# what differs from them (docs/classification.md). The Swin family's full config:
# slab_swin_small.py, slab_swin_base.py and swin_tiny_prepbn.py inherit it and state only
# what differs from it.
#   mim train mmpretrain configs/cls/slab_swin_tiny.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/slab_swin_tiny.py --checkpoint slab_swin_tiny.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_tiny.pth).  # noqa: E501
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SLABSwin',
        arch='tiny',
        attn_types='LLSS',
        window_sizes=(56, 28, 7, 7),
        clamp_windows=True,  # the release's classification windows (no shift if one fits)
        final_norm=True,  # the release's final PRepBN 'norm' on the last stage
        out_indices=(3, ),
        drop_path_rate=0.2,
        norm_eval=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128)  # per GPU; the release trains on 8 GPUs

# AdamW lr 5e-4 x 1024/512, warm-up 20 epochs from 5e-7 x 1024/512, cosine to
# 5e-6 x 1024/512 stepped per iteration (the release's timm scheduler), grad clip 5.0
optim_wrapper = dict(optimizer=dict(lr=5e-4 * 1024 / 512), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-6 * 1024 / 512, by_epoch=True, begin=20,
         end=300, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=1024)

# PRepBN, LayerNorm -> RepBN: the release decays lam over 60000 forward calls of each norm
# (SLAB-Swin), counted per GPU process at 128 images per GPU on 8 GPUs: 60000 iterations
# of 1024 images (61.44M images, 47.96 ImageNet epochs) = 60000 iterations of
# this config's batch (128 x 8 GPUs). With another total batch B: round(61440000 / B).
# ReleaseCheckpointHook (keep it first, custom_hooks.0): load_from / `mim test
# --checkpoint` take the release's classification file as it is.
custom_hooks = [
    dict(type='ReleaseCheckpointHook'),
    dict(type='PRepBNHook', r0=1.0, warmup_iters=0, decay_iters=60000),
    # EMA as the release's main_ema.py (timm ModelEma: decay 0.9999, buffers averaged too;
    # PRepBNHook keeps the averaged model's lam on the schedule). Uncomment to enable:
    # dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL'),
]

# After training, the paper re-estimates the BatchNorm statistics with the weights frozen
# (training images without mixup / cutmix; docs/classification.md, "BatchNorm statistics"):
#   python tools/recalibrate_bn.py <this config> CKPT --iters 1000 \
#       --cfg-options model.train_cfg=None
