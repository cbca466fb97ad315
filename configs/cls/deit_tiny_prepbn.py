# DeiT-T "PRepBN" (DeiT-T with RepBN norms), ImageNet-1k classification
# (release: deit_tiny_prepbn.pth, 73.6 top-1).
#
# SLAB-DeiT-T's config (slab_deit_tiny.py: the release's recipe) with what differs: DeiT's
# softmax attention with its class token, which the head reads, and plain RepBN norms:
# the release's deit_t_prepbn.yaml builds deit_tiny_patch16_224_repbn (deit.py), whose
# norm_layer is RepBN, not LinearNorm. Drop path 0.0, batch, lr, schedule and grad clip
# are SLAB-DeiT-T's.
#   mim train mmpretrain configs/cls/deit_tiny_prepbn.py --launcher pytorch --gpus 8
#   mim test mmpretrain configs/cls/deit_tiny_prepbn.py --checkpoint deit_tiny_prepbn.pth
# with the released file (https://github.com/xinghaochen/SLAB/releases/download/ckpts/deit_tiny_prepbn.pth).  # noqa: E501
_base_ = './slab_deit_tiny.py'

model = dict(backbone=dict(attention='softmax', norm='RepBN', out_type='cls_token'))

# No PRepBNHook: RepBN from the first iteration has no LayerNorm branch and no lam to
# decay (the release's RepBN has no step). custom_hooks is a list: restated whole.
custom_hooks = [dict(type='ReleaseCheckpointHook')]
