"""End to end (slow, CI): a trained SLAB Mask R-CNN through mmdeploy to ONNX Runtime.

A mini SLAB-PVT and a mini SLAB-Swin Mask R-CNN are trained for a few iterations on the
tiny synthetic COCO set (``mim train``, the fixtures and configs of tests/test_e2e.py),
then ``tools/mmdeploy_ort.py`` folds each checkpoint, converts it with mmdeploy 1.3.1
(``torch2onnx`` with torch.onnx's TorchScript exporter; the deploy config
configs/mmdeploy/mask-rcnn_onnxruntime_dynamic.py, which inherits the one the package
ships: dynamic batch / height / width), evaluates the ONNX file with mmdeploy's test runner
in ONNX Runtime and the folded PyTorch model with mmengine's Runner on the same split.
Nothing is mocked.

Checked: the conversion is exact (ONNX Runtime against the same mmdeploy-rewritten model
run in PyTorch: boxes / scores / mask probabilities to 1e-3, same labels and detection
counts), box and mask AP of ONNX Runtime within 0.01 of PyTorch's, and the exported
backbone of the trained detector (``tools/export_onnx.py --config``) at other sizes.
The AP of a few-iteration model is near 0: the README gives the trained demo model's.
"""
import json
import os.path as osp
import sys

import pytest

from test_e2e import ROOT, TRAIN_ITERS, check_coco_metrics, mim, run  # noqa: E402
# the mini detectors' fixtures (module-scoped: data written and SLAB-PVT trained here once)
from test_e2e import (coco_root, det_pvt_cfg, det_pvt_trained, det_swin_cfg,  # noqa: F401,E402
                      e2e_dir)

TOOL = osp.join(ROOT, 'tools', 'mmdeploy_ort.py')
EXPORT = osp.join(ROOT, 'tools', 'export_onnx.py')

TINY_AP_DIFF = 0.05  # AP gate of the tiny detectors (see _deploy_and_check)


@pytest.fixture(scope='module')
def swin_detector(e2e_dir, det_swin_cfg):  # noqa: F811
    work_dir = osp.join(e2e_dir, 'work_swin')
    mim('train', 'mmdet', det_swin_cfg, '--work-dir', work_dir,
        log_file=osp.join(e2e_dir, 'train_swin.log'))
    return det_swin_cfg, osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')


def _deploy_and_check(work, name, cfg, ckpt):
    out_dir = osp.join(work, f'ort_{name}')
    # A 4-iteration detector has AP ~0.02: mmdeploy's post-processing (top class per RoI,
    # one RPN NMS over all levels) moves such near-random detections by a few AP points.
    # The conversion itself is checked exactly below; the 0.01 AP target is measured on
    # the trained demo detector (`make deploy-demo`, README).
    out, _ = run([sys.executable, TOOL, cfg, ckpt, '--work-dir', out_dir,
                  '--max-ap-diff', str(TINY_AP_DIFF)], osp.join(work, f'ort_{name}.log'))
    with open(osp.join(out_dir, 'report.json')) as f:
        report = json.load(f)
    # the tool passes the checkout's deploy config (it inherits the packaged one)
    assert report['deploy_cfg'] == osp.join(ROOT, 'configs', 'mmdeploy',
                                            'mask-rcnn_onnxruntime_dynamic.py')
    # folded first (tools/deploy.py's fold), the trained checkpoint untouched
    assert report['folded_checkpoint'] == osp.join(out_dir, 'folded.pth')
    assert report['fold_relative_error'] <= 1e-4
    # mmdeploy's ONNX: opset 17, dynamic batch / height / width, standard ops only
    import onnx
    model = onnx.load(report['onnx'])
    assert {o.domain: o.version for o in model.opset_import}[''] == 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert {n.domain for n in model.graph.node} <= {''}
    assert {'RoiAlign', 'NonMaxSuppression'} <= {n.op_type for n in model.graph.node}
    # the conversion is exact: ORT == the same mmdeploy-rewritten model in PyTorch
    conv = report['conversion']
    assert conv['same_shapes'] and conv['images'] == 2 and conv['detections'] > 0, conv
    assert conv['max_abs_diff']['labels'] == 0.0, conv
    assert conv['max_abs_diff']['dets'] <= 1e-3 and conv['max_abs_diff']['masks'] <= 1e-3, conv
    # mmdeploy's test runner evaluated ORT; mmengine's Runner PyTorch; same split
    for side in ('ort', 'torch'):
        check_coco_metrics({f'coco/{k}': v for k, v in report[side].items()})
    for k in ('bbox_mAP', 'segm_mAP'):
        assert abs(report['ap_diff'][k]) <= TINY_AP_DIFF, report['ap_diff']
    assert report['detections']['detections'] > 0
    assert 'ONNX Runtime' in out and 'conversion check' in out
    return report


@pytest.mark.slow
def test_mmdeploy_ort_slab_pvt_mask_rcnn(e2e_dir, det_pvt_cfg, det_pvt_trained):  # noqa: F811
    work = e2e_dir
    report = _deploy_and_check(work, 'pvt', det_pvt_cfg, det_pvt_trained['ckpt'])
    # the folded detector's backbone alone, through tools/export_onnx.py --config
    out = osp.join(work, 'pvt_backbone.onnx')
    text, _ = run([sys.executable, EXPORT, out, '--config', report['folded_config'],
                   '--checkpoint', report['folded_checkpoint'], '--shape', '1x3x128x128'],
                  osp.join(work, 'export_pvt_backbone.log'))
    assert 'passed' in text and 'TorchScript exporter' in text and osp.isfile(out)


@pytest.mark.slow
def test_mmdeploy_ort_slab_swin_mask_rcnn(e2e_dir, swin_detector):  # noqa: F811
    cfg, ckpt = swin_detector
    _deploy_and_check(e2e_dir, 'swin', cfg, ckpt)
