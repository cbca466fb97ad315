# Mask R-CNN + FPN with mmdet's own PVTv2-b0, its LayerNorms replaced by PRepBN: fine-tuned
# from the stock LayerNorm ImageNet weights (pvt_v2_b0.pth, loaded through PVTv2's usual
# init_cfg; the LayerNorm entries go to PRepBN's LayerNorm branch, lam = 1), LayerNorm
# fades into RepBN over the first half of the run, and the converged model folds
# (tools/deploy.py: every norm becomes its per-channel affine map).
#
#   mim train mmdet configs/prepbn/mask_rcnn_pvtv2_b0_prepbn_fpn_1x_coco.py
#   python tools/deploy.py configs/prepbn/mask_rcnn_pvtv2_b0_prepbn_fpn_1x_coco.py \
#       work_dirs/<run>/epoch_12.pth work_dirs/<run>/folded.pth
#
# The backbone settings are those of mmdet's retinanet_pvtv2-b0_fpn_1x_coco.py; the
# detector, schedule and data are mmdet's Mask R-CNN 1x. Only the norm differs.
# No result of this config on COCO has been measured here.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PyramidVisionTransformerV2',
        embed_dims=32,
        num_layers=[2, 2, 2, 2],
        norm_cfg=dict(type='PRepBN', eps=1e-6),  # was dict(type='LN', eps=1e-6)
        init_cfg=dict(checkpoint='https://github.com/whai362/PVT/'
                      'releases/download/v2/pvt_v2_b0.pth')),
    neck=dict(in_channels=[32, 64, 160, 256]))

# mmdet's PVTv2 recipe (AdamW lr 1e-4, weight decay 1e-4); no decay on the norms (this
# includes RepBN's alpha: its name is ...norm2.alpha).
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# LayerNorm (lam = 1) into RepBN (lam = 0) linearly over the first half of the run, keyed
# on the runner's iteration; the second half trains pure RepBN, which is what folds.
custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=0.5)]
