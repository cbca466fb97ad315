# mmdeploy 1.3.1 deploy config: mmdet instance segmentation (Mask R-CNN) -> ONNX Runtime,
# dynamic batch / height / width, opset 17. The settings live in the package, which ships
# them (mmslab/deploy_configs/mask_rcnn_onnxruntime_dynamic.py, where they are explained);
# this file is the checkout's handle on them: inherit it, or copy it and change a field.
#
#   python tools/mmdeploy_ort.py MODEL_CONFIG CHECKPOINT --work-dir work_dirs/ort \
#       --deploy-cfg configs/mmdeploy/mask-rcnn_onnxruntime_dynamic.py
_base_ = ['../../mmslab/deploy_configs/mask_rcnn_onnxruntime_dynamic.py']
