# mmdeploy 1.3.1 deploy config: mmdet instance segmentation (Mask R-CNN) -> ONNX Runtime,
# dynamic batch / height / width. Self-contained: the mmdeploy wheel on PyPI ships no
# configs (they live in its GitHub repository), so this file states everything that
# mmdeploy's configs/mmdet/instance-seg/instance-seg_onnxruntime_dynamic.py states through
# its _base_ chain (onnx_config.py, backends/onnxruntime.py, base_static.py,
# base_instance-seg_static.py, base_instance-seg_dynamic.py), with one change:
# opset_version 17 instead of 11 (the SLAB / Swin backbones use scaled_dot_product_attention
# (opset >= 14) and LayerNorm (one op from 17); mmdeploy then exports RoIAlign as the
# standard onnx RoiAlign with coordinate_transformation_mode, opset >= 16).
#
# Shipped inside the package (mmslab.deploy_configs.MASK_RCNN_ORT_DYNAMIC, the default of
# mmslab.mmdeploy_ort); configs/mmdeploy/mask-rcnn_onnxruntime_dynamic.py in a checkout
# inherits it. Usage:
#
#   python tools/mmdeploy_ort.py MODEL_CONFIG CHECKPOINT --work-dir work_dirs/ort \
#       [--deploy-cfg DEPLOY_CONFIG]
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=17,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['dets', 'labels', 'masks'],
    input_shape=None,
    optimize=True,
    dynamic_axes={
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'dets': {0: 'batch', 1: 'num_dets'},
        'labels': {0: 'batch', 1: 'num_dets'},
        'masks': {0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'},
    })
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
        export_postprocess_mask=False))
backend_config = dict(type='onnxruntime')
