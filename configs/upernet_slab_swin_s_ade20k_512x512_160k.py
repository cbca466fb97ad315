# UperNet with SLAB-Swin-S (depths [2, 2, 18, 2]) on ADE20K, 512x512, 160k iterations.
# Same recipe as upernet_slab_swin_t_ade20k_512x512_160k.py, weights
# slab_swin_small.pth (83.6 top-1).
_base_ = ['./upernet_slab_swin_t_ade20k_512x512_160k.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_swin_small.pth'  # noqa: E501

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
