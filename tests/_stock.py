"""Small stock OpenMMLab transformers (mmdet PVTv2, Swin, DETR encoder; mmseg MiT, ViT)
built with a given ``norm_cfg``, for the PRepBN-anywhere tests."""
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
        return DetrTransformerEncoder(2, dict(
            self_attn_cfg=dict(embed_dims=16, num_heads=2),
            ffn_cfg=dict(embed_dims=16, feedforward_channels=32), norm_cfg=norm_cfg))
    if kind == 'mmseg_mit':
        from mmseg.models.backbones import MixVisionTransformer
        return MixVisionTransformer(embed_dims=16, num_layers=[1, 1, 1, 1],
                                    num_heads=[1, 1, 2, 2], norm_cfg=norm_cfg)
    from mmseg.models.backbones import VisionTransformer
    return VisionTransformer(img_size=(32, 32), patch_size=8, embed_dims=16, num_layers=2,
                             num_heads=2, out_indices=(1, ), final_norm=True,
                             norm_cfg=norm_cfg)


KINDS = ['mmdet_pvtv2', 'mmdet_swin', 'mmdet_detr_encoder', 'mmseg_mit', 'mmseg_vit']


def run_tokens_model(kind: str, model: nn.Module, x: torch.Tensor):
    if kind == 'mmdet_detr_encoder':
        return (model(x, query_pos=torch.zeros_like(x), key_padding_mask=None), )
    return tuple(model(x))


def tokens_input(kind: str) -> torch.Tensor:
    """A float64 input for ``tokens_model(kind)``."""
    return (torch.randn(2, 10, 16) if kind == 'mmdet_detr_encoder'
            else torch.randn(2, 3, 32, 32)).double()
