from . import cpu_inference  # noqa: F401  (the CPU inference path's switch: enabled())
from .arch import PVT_ARCHS, SWIN_ARCHS, PVTArch, SwinArch
from .attention import (SimplifiedLinearAttention, SpatialReductionAttention, TokenMixer,
                        WindowAttention)
from .base_backbone import SLABBackbone
from .key_conversion import convert_slab_pvt, convert_slab_swin
from .pretrained import load_pretrained
from .reparameterize import reparameterize
from .slab_pvt import SLABPVT
from .slab_swin import SLABSwin
from .weight_init import SLABScratchInit, init_transformer_weights

__all__ = [
    'TokenMixer', 'SimplifiedLinearAttention',
    'WindowAttention', 'SpatialReductionAttention', 'SLABBackbone', 'SLABPVT', 'SLABSwin',
    'PVTArch', 'SwinArch', 'PVT_ARCHS', 'SWIN_ARCHS', 'convert_slab_pvt', 'convert_slab_swin',
    'load_pretrained', 'reparameterize', 'SLABScratchInit', 'init_transformer_weights'
]
