"""Deploy configs that ship with mmslab (mmdeploy 1.3.1's wheel ships none).

:data:`MASK_RCNN_ORT_DYNAMIC`: Mask R-CNN (mmdet instance segmentation) -> ONNX Runtime,
dynamic batch / height / width, opset 17; the default of :mod:`mmslab.mmdeploy_ort`.
"""
import os.path as osp

MASK_RCNN_ORT_DYNAMIC = osp.join(osp.dirname(osp.abspath(__file__)),
                                 'mask_rcnn_onnxruntime_dynamic.py')
