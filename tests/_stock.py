"""Small stock OpenMMLab transformers (mmdet PVTv2, Swin, DETR encoder; mmseg MiT, ViT;
mmpretrain ViT) built with a given ``norm_cfg``, for the PRepBN-anywhere tests."""
import torch
import torch.nn as nn


def tokens_model(kind: str, norm_cfg: dict) -> nn.Module:
    if kind == 'mmdet_pvtv2':
        from mmdet.models.backbones import PyramidVisionTransformerV2
        return PyramidVisionTransformerV2(embed_dims=16, num_layers=[1, 1, 1, 1],
                                          num_heads=[1, 1, 2, 2], norm_cfg=norm_cfg)
    if kind == 'mmdet_swin':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=16, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2),
                               window_size=4, norm_cfg=norm_cfg)
    if kind == 'mmdet_detr_encoder':
        from mmdet.models.layers.transformer import DetrTransformerEncoder
        # dropout_layer given: mmcv's MultiheadAttention keeps its default dropout_layer
        # dict across calls and a `dropout=` argument writes into it, so any model built
        # earlier in the process with dropout=0.1 (Deformable DETR's decoder) would leave
        # 0.1 here
        return DetrTransformerEncoder(2, dict(
            self_attn_cfg=dict(embed_dims=16, num_heads=2, attn_drop=0., proj_drop=0.,
                               dropout_layer=None),
            ffn_cfg=dict(embed_dims=16, feedforward_channels=32), norm_cfg=norm_cfg))
    if kind == 'mmseg_mit':
        from mmseg.models.backbones import MixVisionTransformer
        return MixVisionTransformer(embed_dims=16, num_layers=[1, 1, 1, 1],
                                    num_heads=[1, 1, 2, 2], norm_cfg=norm_cfg)
    if kind == 'mmseg_vit':
        from mmseg.models.backbones import VisionTransformer
        return VisionTransformer(img_size=(32, 32), patch_size=8, embed_dims=16, num_layers=2,
                                 num_heads=2, out_indices=(1, ), final_norm=True,
                                 norm_cfg=norm_cfg)
    if kind == 'mmpretrain_vit':
        # its norms come from mmpretrain's own build_norm_layer (mmpretrain's registry);
        # pre_norm and the average-pooled output add the two norms a default ViT lacks
        from mmpretrain.models import VisionTransformer as PretrainViT
        return PretrainViT(arch=dict(embed_dims=16, num_layers=2, num_heads=2,
                                     feedforward_channels=32),
                           img_size=32, patch_size=8, pre_norm=True, out_type='avg_featmap',
                           norm_cfg=norm_cfg)
    raise KeyError(f'unknown kind {kind!r}; choose from {KINDS}')


KINDS = ['mmdet_pvtv2', 'mmdet_swin', 'mmdet_detr_encoder', 'mmseg_mit', 'mmseg_vit',
         'mmpretrain_vit']


def run_tokens_model(kind: str, model: nn.Module, x: torch.Tensor):
    if kind == 'mmdet_detr_encoder':
        return (model(x, query_pos=torch.zeros_like(x), key_padding_mask=None), )
    return tuple(model(x))


def tokens_input(kind: str) -> torch.Tensor:
    """A float64 input for ``tokens_model(kind)``."""
    return (torch.randn(2, 10, 16) if kind == 'mmdet_detr_encoder'
            else torch.randn(2, 3, 32, 32)).double()
