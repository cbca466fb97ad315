# Deformable DETR (ResNet-50, COCO, 50 epochs) whose transformer encoder uses PRepBN
# instead of LayerNorm: the stock mmdet recipe with one change, the encoder layers'
# norm_cfg. LayerNorm fades into RepBN over the first half of the run (PRepBNHook, keyed on
# the runner's iteration); the converged encoder norms fold into per-channel affine maps
# (tools/deploy.py). The decoder keeps LayerNorm: its tokens are object queries, whose
# batch statistics are not those of image features.
#
#   mim train mmdet configs/prepbn/deformable_detr_prepbn_encoder_r50_16xb2_50e_coco.py
#
# Fine-tuning the stock COCO model instead of training from scratch: its encoder
# LayerNorms load into the PRepBN LayerNorm branches (lam = 1) with
#   load_from = 'https://download.openmmlab.com/mmdetection/v3.0/deformable_detr/deformable-detr_r50_16xb2-50e_coco/deformable-detr_r50_16xb2-50e_coco_20221029_210934-6bc7d21b.pth'  # noqa: E501
# The encoder pads the images of a batch to one size; RepBN's statistics include the padded
# positions (measured: docs/prepbn.md, "Padded tokens").
# No result of this config on COCO has been measured here.
_base_ = ['mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py']

custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)

model = dict(encoder=dict(layer_cfg=dict(norm_cfg=dict(type='PRepBN'))))  # was LN

custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=0.5)]
