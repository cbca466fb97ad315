from . import cpu_inference  # noqa: F401  (the CPU inference path's switch: enabled())
from .arch import DEIT_ARCHS, PVT_ARCHS, SWIN_ARCHS, DeiTArch, PVTArch, SwinArch
from .attention import (SimplifiedLinearAttention, SpatialReductionAttention, TokenMixer,
                        WindowAttention)
from .base_backbone import SLABBackbone
from .classifier_conversion import classifier_state_dict, convert_release_classifier
from .key_conversion import convert_deit, convert_slab_pvt, convert_slab_swin
from .pretrained import load_pretrained
from .reparameterize import reparameterize
from .slab_deit import SLABDeiT
from .slab_pvt import SLABPVT
from .slab_swin import SLABSwin
from .weight_init import SLABScratchInit, init_transformer_weights

__all__ = [
    'TokenMixer', 'SimplifiedLinearAttention',
    'WindowAttention', 'SpatialReductionAttention', 'SLABBackbone', 'SLABPVT', 'SLABSwin',
    'SLABDeiT', 'PVTArch', 'SwinArch', 'DeiTArch', 'PVT_ARCHS', 'SWIN_ARCHS', 'DEIT_ARCHS',
    'convert_slab_pvt', 'convert_slab_swin', 'convert_deit',
    'load_pretrained', 'reparameterize', 'SLABScratchInit', 'init_transformer_weights',
    'classifier_state_dict', 'convert_release_classifier'
]
