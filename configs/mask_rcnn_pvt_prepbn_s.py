# Mask R-CNN + FPN with PVT-PRepBN-S (PVT-S with Progressive Re-parameterized
# BatchNorm), COCO, 1x schedule.
#
# Not SLAB-PVT-S: the SLAB release has no SLAB-PVT-S weights (SLA + PRepBN exists
# pretrained only for PVT-T). Its PRepBN-only PVT-S, pvt_small_prepbn.pth (80.1 top-1),
# keeps PVT's softmax spatial-reduction attention, so this config builds exactly that
# model: SLABPVT(arch='small', attn_types='SSSS') -- depths [3, 4, 6, 3], softmax SRA
# with sr_ratios (8, 4, 2, 1) in every stage, PRepBN norms. Everything else follows
# mask_rcnn_slab_pvt.py.
_base_ = ['./mask_rcnn_slab_pvt.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/pvt_small_prepbn.pth'  # noqa: E501

model = dict(
    backbone=dict(
        arch='small',
        attn_types='SSSS',
        sr_ratios=(8, 4, 2, 1),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
