# UperNet with SLAB-PVT-T (SLA in every stage, embed_dims [64, 128, 320, 512]) on
# ADE20K, 512x512, 160k iterations. mmseg's Swin UperNet recipe (AdamW lr 6e-5,
# wd 0.01, poly decay) with the release's slab_pvt_tiny.pth (76.5 top-1); drop path
# 0.1 as in the detection config. Position embeddings and SLA's positional encodings
# (sized for 224 input) are resized bilinearly to the 128x128 / ... / 16x16 maps.
_base_ = ['./upernet_slab_swin_t_ade20k_512x512_160k.py']

pretrained = 'https://github.com/xinghaochen/SLAB/releases/download/ckpts/slab_pvt_tiny.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLABPVT',
        arch='tiny',
        attn_types='LLLL',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))

optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.)}))
