# CPU demo: UperNet + SLAB-Swin on the synthetic ADE20K-layout shapes set, trained FROM
# SCRATCH (no ImageNet weights offline: init_cfg=None).
#
# What it shows: ../upernet_slab_swin_t_ade20k_512x512_160k.py trains and evaluates
# (mIoU) through mmseg with a SLAB-Swin backbone ('LLSS': SLA stages 1-2, Swin window
# attention stages 3-4), with the PRepBN schedule from LayerNorm to RepBN over the first
# 80% of the iterations (PRepBNHook r0=1.0, decay_iters=0.8, norm_eval=False). It says
# nothing about ADE20K accuracy. Data: tools/make_demo_data.py writes data/demo_ade/ in
# ADE20K's layout and label convention (stored 0 = "other", class k stored as k+1).
#
# Changed from the full config, and only this:
# * data: data/demo_ade/ read by mmseg's BaseSegDataset with ADE20KDataset's settings
#   (.jpg images, .png label maps, reduce_zero_label=True) -- ADE20KDataset itself only
#   accepts a subset of its 150 class names as `metainfo` classes -- and our 5 classes;
#   256x256 input, random resize 0.75-1.5 + crop + flip (no photometric distortion);
# * model size: SLAB-Swin with embed 32, depths 2/2/2/2, heads 1/2/4/8; the SLA windows
#   cover a whole stage at 256 px (64 / 32) and the softmax window is 8; UperNet with
#   128 channels; plain BN in the heads (single process);
# * schedule: AdamW lr 1e-3, warmup + poly decay, a few hundred iterations.
#
#   python tools/make_demo_data.py --only ade
#   mim train mmsegmentation configs/demo/upernet_slab_swin_demo.py \
#       --work-dir work_dirs/demo_seg
_base_ = ['../upernet_slab_swin_t_ade20k_512x512_160k.py']

classes = ('background', 'circle', 'square', 'triangle', 'star')
palette = [(120, 120, 120), (220, 50, 40), (40, 190, 60), (40, 80, 225),
           (235, 205, 30)]
metainfo = dict(classes=classes, palette=palette)
data_root = 'data/demo_ade'
image_size = 256
crop_size = (image_size, image_size)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        embed_dims=32,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_sizes=(64, 32, 8, 8),
        pretrain_img_size=image_size,
        drop_path_rate=0.0,
        norm_eval=False,  # train RepBN's BatchNorm (from scratch)
        init_cfg=None),
    decode_head=dict(
        in_channels=[32, 64, 128, 256],
        channels=128,
        num_classes=len(classes),
        norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=128,
        channels=64,
        num_classes=len(classes),
        norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=crop_size,
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.01), clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=50,
        end=max_iters,
        by_epoch=False)
]

# from scratch: LayerNorm -> RepBN over the first 80% of the iterations
custom_hooks = [dict(type='PRepBNHook', r0=1.0, warmup_iters=0, decay_iters=0.8)]

default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
randomness = dict(seed=0)
