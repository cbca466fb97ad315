from .attention import SimplifiedLinearAttention, SpatialReductionAttention, WindowAttention
from .checkpoint import convert_slab_pvt, convert_slab_swin, load_pretrained
from .norms import PRepBN, RepBN, set_prepbn_lam
from .reparameterize import reparameterize
from .slab_pvt import SLABPVT
from .slab_swin import SLABSwin
from .weight_init import SLABScratchInit, init_transformer_weights

__all__ = [
    'PRepBN', 'RepBN', 'set_prepbn_lam', 'SimplifiedLinearAttention', 'WindowAttention',
    'SpatialReductionAttention', 'SLABPVT', 'SLABSwin', 'convert_slab_pvt', 'convert_slab_swin',
    'load_pretrained', 'reparameterize', 'SLABScratchInit', 'init_transformer_weights'
]
