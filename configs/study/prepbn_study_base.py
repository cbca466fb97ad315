# The PRepBN from-scratch study's settings (tools/prepbn_study.py; README, "From scratch"):
# the demo detector (../demo/mask_rcnn_slab_pvt_demo.py) trained for 300 iterations of
# batch 4 with lighter RoI heads. tools/prepbn_study.py loads this config and sets, per
# run: the variant's backbone (and its init_cfg) and PRepBN schedule, the seed, the data
# root, the image size (every Resize of the pipelines, the backbone's pretrain_img_size)
# and, when --iters differs, the iteration counts below.
#
#   python tools/prepbn_study.py --work-dir work_dirs/prepbn_study
_base_ = ['../demo/mask_rcnn_slab_pvt_demo.py']

data_root = 'work_dirs/prepbn_study/data/'  # (the study writes its data under --work-dir)
max_iters = 300
warmup = max_iters // 10

# lighter RoI heads than the demo's (fewer sampled anchors / RoIs and proposals): the
# study compares backbones, and these dominate the iteration time on a CPU
model = dict(
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))

train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# iteration-based: validation (CocoMetric) and the one checkpoint at the end of the run
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup, eta_min_ratio=0.01,
         by_epoch=False, begin=warmup, end=max_iters)
]
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
