"""PRepBN on its own: the norm, usable in any OpenMMLab module (``norm_cfg=dict(type=
'PRepBN')``), with what it takes from LayerNorm weights to a folded model -- the
LayerNorm -> PRepBN module converter and checkpoint key map, the schedule's ``lam``
setter (``PRepBNHook`` calls it), the exact affine folds, and the BatchNorm statistics
re-estimation. It imports nothing of the SLAB backbones (they import it)."""
from .affine import (apply_channel_affine, fold_affine_into_conv, fold_affine_into_conv_input,
                     fold_affine_into_linear)
from .convert import convert_layernorm_to_prepbn, layernorm_keys_to_prepbn
from .fold import check_norms_foldable, fold_norms, foldable_norms
from .keymap import load_layernorm_entries
from .norm import PRepBN, RepBN
from .schedule import prepbn_modules, set_prepbn_lam

__all__ = [
    'PRepBN', 'RepBN', 'set_prepbn_lam', 'prepbn_modules', 'convert_layernorm_to_prepbn',
    'layernorm_keys_to_prepbn', 'load_layernorm_entries', 'fold_norms', 'foldable_norms',
    'check_norms_foldable', 'apply_channel_affine', 'fold_affine_into_linear',
    'fold_affine_into_conv', 'fold_affine_into_conv_input'
]
