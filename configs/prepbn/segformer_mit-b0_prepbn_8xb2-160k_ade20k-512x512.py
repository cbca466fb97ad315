# SegFormer (MiT-b0) on ADE20K, 160k iterations, with every MiT LayerNorm replaced by
# PRepBN: fine-tuned from the stock LayerNorm ImageNet weights (mit_b0, through MiT's
# usual init_cfg; the LayerNorm entries go to PRepBN's LayerNorm branch, lam = 1),
# LayerNorm fades into RepBN over the first half of the run, and the converged backbone
# folds (tools/deploy.py). The stock mmseg recipe otherwise.
#
#   mim train mmseg configs/prepbn/segformer_mit-b0_prepbn_8xb2-160k_ade20k-512x512.py
#
# No result of this config on ADE20K has been measured here.
_base_ = ['mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

model = dict(backbone=dict(norm_cfg=dict(type='PRepBN', eps=1e-6)))  # was LN, eps 1e-6

custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=0.5)]
