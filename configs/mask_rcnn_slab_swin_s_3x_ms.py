# Mask R-CNN + FPN with SLAB-Swin-S, COCO, 3x schedule with multi-scale (480-800 + crop)
# training. Same recipe as mask_rcnn_slab_swin_t_3x_ms.py, weights slab_swin_small.pth.
_base_ = ['./mask_rcnn_slab_swin_t_3x_ms.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_small.pth'  # noqa: E501

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
