# Mask R-CNN + FPN with Swin-T-PRepBN (plain Swin-T -- window 7 softmax attention in
# every stage -- with PRepBN norms instead of LayerNorm), COCO, 1x schedule. The
# PRepBN-only ablation of the release (swin_tiny_prepbn.pth, 81.4 top-1); compare with
# mmdet's own mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py.
_base_ = ['./mask_rcnn_slab_swin_t_1x.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/swin_tiny_prepbn.pth'  # noqa: E501

model = dict(
    backbone=dict(
        attn_types='SSSS',
        window_sizes=(7, 7, 7, 7),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
