# Mask R-CNN + FPN with SLAB-Swin-S (depths [2, 2, 18, 2], drop path 0.3), COCO, 1x.
# Same recipe as mask_rcnn_slab_swin_t_1x.py, weights slab_swin_small.pth (83.6 top-1).
_base_ = ['./mask_rcnn_slab_swin_t_1x.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_small.pth'  # noqa: E501

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
