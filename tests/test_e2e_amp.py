"""End to end under mmengine's AMP: the SLAB Mask R-CNN trains with ``AmpOptimWrapper``
(bfloat16 autocast on the CPU) and its val / test loops run with ``fp16=True`` (slow, CI).

The same mini detector as tests/test_e2e.py (the demo config with a mini SLAB-PVT and the
PRepBN schedule LayerNorm -> RepBN, 128 px synthetic COCO set), in an in-process Runner:

* ``optim_wrapper.type='AmpOptimWrapper', dtype='bfloat16'`` -- what ``mim train mmdet
  CFG --amp`` sets (``loss_scale='dynamic'``), with the dtype the CPU supports. mmengine
  0.10.7 refuses to *build* an ``AmpOptimWrapper`` without CUDA/NPU/MLU/MUSA (an assert in
  its ``__init__``; ``--amp`` on a CPU machine therefore fails before training). Everything
  else in it works on the CPU: its ``optim_context`` enters mmengine's ``autocast`` (CPU ->
  ``torch.autocast('cpu', torch.bfloat16)``), and its ``GradScaler`` disables itself without
  CUDA (bfloat16 needs no loss scaling). The test lifts only that availability assert;
* ``val_cfg = dict(type='ValLoop', fp16=True)`` and ``test_cfg`` likewise: mmengine runs
  the val / test forwards under ``autocast()`` -- bfloat16 on the CPU.

A forward hook on the backbone records that autocast was really on (and with which dtype)
in training, validation and test, and that the backbone's GEMMs ran in bfloat16.
"""
import importlib
import math
import os.path as osp

import pytest
import torch

from _e2e import (DET_BODY, DEMO_DET, IMAGE_SIZE, PVT_MINI, PVT_MINI_CHANNELS, CLASSES,
                      check_coco_metrics, check_training_log, load_ckpt, write_config)

ITERS = 4


class Float32Kernels:
    """mmcv 2.1's compiled *CPU* kernels of NMS and RoIAlign have no bfloat16 / half
    implementation ("ROIAlign_forward" not implemented for 'BFloat16'; its CUDA kernels
    have half ones, and torchvision's ops, which the GPU kit substitutes, cast under
    autocast). Under CPU autocast the RPN boxes and the FPN features reach them in
    bfloat16, so in this test they run in float32: inputs upcast, what the kernel wrote into
    its output buffers copied back into the caller's (bfloat16) ones. Nothing of the backbone, neck or heads is
    changed."""

    def __init__(self, ext):
        self._ext = ext

    def __getattr__(self, name):
        fn = getattr(self._ext, name)

        def call(*args, **kwargs):
            low = any(isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16)
                      for a in args)
            if not low:
                return fn(*args, **kwargs)
            up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                  for a in args]
            out = fn(*up, **kwargs)
            for a, b in zip(args, up):  # outputs the kernel wrote (inputs are unchanged)
                if b is not a and not torch.equal(b, a.float()):
                    a.copy_(b)
            return out
        return call


def _bf16_to_float32(obj):
    if isinstance(obj, torch.Tensor) and obj.dtype == torch.bfloat16:
        return obj.float()
    if isinstance(obj, dict):
        return {k: _bf16_to_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_bf16_to_float32(v) for v in obj)
    return obj


@pytest.fixture(scope='module')
def amp_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('e2e_amp')


@pytest.mark.slow
def test_amp_train_val_test_mask_rcnn_slab_pvt(amp_dir, coco_root, monkeypatch):
    from mmengine.config import Config
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.runner import Runner

    cfg_file = write_config(
        osp.join(amp_dir, 'mask_rcnn_slab_pvt_mini_amp.py'), DEMO_DET,
        'backbone_override = dict(pretrain_img_size=image_size, **backbone)\n' + DET_BODY + """
# mmengine's AMP: what `mim train --amp` sets, in bfloat16 (CPU autocast)
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
val_dataloader = test_dataloader
val_evaluator = test_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
val_cfg = dict(type='ValLoop', fp16=True)
test_cfg = dict(type='TestLoop', fp16=True)
""", data_root=coco_root, image_size=IMAGE_SIZE, classes=CLASSES, max_iters=ITERS,
        backbone=PVT_MINI, backbone_channels=PVT_MINI_CHANNELS)
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = osp.join(amp_dir, 'work')
    # mmdet's configs name their visualizer 'visualizer', and mmengine hands out an existing
    # instance of that name: a Runner built earlier in this process would keep the logs
    cfg.visualizer.name = f'mmslab_e2e_amp_{osp.basename(amp_dir)}_{id(cfg)}'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'  # the demo's, kept

    if not torch.cuda.is_available():
        # The one thing mmengine 0.10.7 does not allow on a CPU machine: building the wrapper.
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
        # mmcv's CPU NMS / RoIAlign kernels: float32 only (see Float32Kernels)
        for name in ('mmcv.ops.nms', 'mmcv.ops.roi_align'):
            mod = importlib.import_module(name)  # (mmcv.ops.nms is also a function)
            monkeypatch.setattr(mod, 'ext_module', Float32Kernels(mod.ext_module))
        # numpy has no bfloat16 (float16 predictions, CUDA's fp16=True, it reads): the
        # metric gets the bfloat16 predictions as float32
        from mmdet.evaluation import CocoMetric
        process = CocoMetric.process
        monkeypatch.setattr(CocoMetric, 'process', lambda self, data_batch, data_samples:
                            process(self, data_batch, _bf16_to_float32(data_samples)))

    runner = Runner.from_cfg(cfg)
    seen = []      # per backbone forward: (mode, autocast on, autocast dtype, Linear dtype)
    captured = []  # output dtype of a Linear of the backbone

    def record(module, args, output):
        dev = args[0].device.type
        enabled = torch.is_autocast_enabled(dev)
        seen.append(('train' if module.training else 'eval', enabled,
                     torch.get_autocast_dtype(dev) if enabled else None,
                     captured[-1] if captured else None))
        captured.clear()

    backbone = runner.model.backbone
    backbone.register_forward_hook(record)
    fc1 = backbone.stages[0].blocks[0].mlp.fc1   # an nn.Linear of the first block's MLP
    assert isinstance(fc1, torch.nn.Linear)
    fc1.register_forward_hook(lambda m, a, out: captured.append(out.dtype))

    runner.train()
    from mmengine.optim import AmpOptimWrapper
    assert type(runner.optim_wrapper) is AmpOptimWrapper
    assert runner.optim_wrapper.cast_dtype == torch.bfloat16
    records = check_training_log(cfg.work_dir, 1, ITERS)
    # the PRepBN schedule ran under AMP: from LayerNorm (lam 1) through the mixed form
    # towards RepBN (lam 0), whatever the decay length of the e2e schedule
    lams = [r['prepbn_lam'] for r in records]
    assert lams[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(lams, lams[1:]))
    assert any(0.0 < lam < 1.0 for lam in lams) and lams[-1] < lams[0], lams
    assert all(math.isfinite(r[k]) for r in records for k in r if k.startswith('loss'))
    train_calls = [s for s in seen if s[0] == 'train']
    assert len(train_calls) == ITERS
    assert all(s[1:] == (True, torch.bfloat16, torch.bfloat16) for s in train_calls), seen
    # the validation at the end of training ran under autocast (ValLoop fp16=True)
    val_calls = [s for s in seen if s[0] == 'eval']
    assert val_calls and all(s[1:] == (True, torch.bfloat16, torch.bfloat16)
                             for s in val_calls), seen
    val_ap = runner.message_hub.get_scalar('val/coco/bbox_mAP').current()
    assert 0.0 <= val_ap <= 1.0
    ckpt = load_ckpt(osp.join(cfg.work_dir, f'iter_{ITERS}.pth'))
    assert 'loss_scaler' in ckpt['optimizer']   # AmpOptimWrapper's state, saved
    assert all(torch.isfinite(v).all() for k, v in ckpt['state_dict'].items()
               if k.startswith('backbone.') and v.is_floating_point())

    seen.clear()
    metrics = runner.test()
    check_coco_metrics(metrics)
    assert seen and all(s[1:] == (True, torch.bfloat16, torch.bfloat16) for s in seen), seen
