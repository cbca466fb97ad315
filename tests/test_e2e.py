"""End to end: the SLAB backbones through the real mmdet / mmseg tool chain (slow, CI).

Every run trains a *mini* model for a few iterations on a tiny synthetic set
(:mod:`mmslab.datasets.synthetic`, 8 train / 4 val images of 128 px) written to a temporary
directory, with a config file written next to it that inherits a config of the repository
(by absolute path) or a stock ``mmdet::`` config and overrides only the data, the model
size and the schedule. Nothing is mocked: real mmengine Runners (``mim train`` / ``mim
test`` / ``torch.distributed.run`` subprocesses, one in-process Runner), real mmdet /
mmseg models, pycocotools' COCO evaluation, mmseg's IoU metric and real checkpoint files.
Accuracy is *not* asserted (a few iterations from scratch): metrics must exist and lie in
their range; deploy / resume / DDP are checked exactly.
"""
import glob
import json
import math
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from _mini import mini_kwargs

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, 'tests')
DEMO_DET = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_slab_pvt_demo.py')
DEMO_SEG = osp.join(ROOT, 'configs', 'demo', 'upernet_slab_swin_demo.py')
SWIN_DET = osp.join(ROOT, 'configs', 'mask_rcnn_slab_swin_t_1x.py')
DEPLOY = osp.join(ROOT, 'tools', 'deploy.py')

IMAGE_SIZE = 128
NUM_TRAIN, NUM_VAL = 8, 4
TRAIN_ITERS = 4
PVT_DECAY = 0.5  # PRepBNHook decay of the mini SLAB-PVT detector runs (fraction of max_iters)
SUBPROCESS_TIMEOUT = 900
# mini backbones (tests/_mini.py: SLAB-PVT-T / SLAB-Swin-T layouts, much narrower and
# shallower), merged into the configs' backbones: every structural key is given
PVT_MINI = mini_kwargs('slab_pvt')
PVT_MINI_CHANNELS = [16, 32, 40, 64]
SWIN_MINI = mini_kwargs('slab_swin', embed_dims=32,
                        window_sizes=(32, 16, 8, 4))  # SLA windows = whole stage at 128 px
SWIN_MINI_CHANNELS = [32, 64, 128, 256]
CLASSES = ('circle', 'square', 'triangle', 'star')  # mmslab.datasets.SHAPE_CLASSES

# ----------------------------------------------------------------------------- helpers


def write_config(path, base, body, **variables):
    """Write a python config: ``_base_ = [base]``, ``name = repr(value)`` for every
    variable, then ``body`` (which may use the variables)."""
    lines = [f'_base_ = [{base!r}]']
    lines += [f'{k} = {v!r}' for k, v in variables.items()]
    lines.append(textwrap.dedent(body))
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return str(path)


def _tail(text, n=80):
    return '\n'.join(text.splitlines()[-n:])


def run(args, log_file, env=None, timeout=SUBPROCESS_TIMEOUT):
    """Run a command from the repository root, output to ``log_file``; return the output
    and the wall time. Fails with the end of the output if the command fails."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    start = time.time()
    with open(log_file, 'w') as f:
        proc = subprocess.run([str(a) for a in args], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT, env=full_env, timeout=timeout)
    elapsed = time.time() - start
    with open(log_file) as f:
        out = f.read()
    assert proc.returncode == 0, (
        f'`{" ".join(str(a) for a in args)}` exited with {proc.returncode} after '
        f'{elapsed:.0f} s; end of {log_file}:\n{_tail(out)}')
    return out, elapsed


def mim(*args, log_file, **kwargs):
    return run([sys.executable, '-m', 'mim', *args], log_file, **kwargs)


def _json_path(run: str) -> str:
    """mmengine writes a training run's json log to ``<ts>/vis_data/<ts>.json`` and a
    test run's to ``<ts>/<ts>.json``."""
    name = osp.basename(run) + '.json'
    for path in (osp.join(run, name), osp.join(run, 'vis_data', name)):
        if osp.isfile(path):
            return path
    return ''


def run_dir(work_dir):
    """The single ``<work_dir>/<timestamp>/`` directory of a Runner."""
    dirs = [d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d) and _json_path(d)]
    assert len(dirs) == 1, f'expected one run directory with a json log in {work_dir}: {dirs}'
    return dirs[0]


def json_log(work_dir):
    """The records of the run's json log (one per logging step / evaluation)."""
    with open(_json_path(run_dir(work_dir))) as f:
        return [json.loads(line) for line in f if line.strip()]


def text_log(work_dir):
    d = run_dir(work_dir)
    with open(osp.join(d, osp.basename(d) + '.log')) as f:
        return f.read()


def eval_metrics(work_dir):
    """The metric dict a ``tools/test.py`` run logged (last json record)."""
    return json_log(work_dir)[-1]


def check_training_log(work_dir, first_iter, last_iter):
    """Every iteration first_iter..last_iter was logged with a finite loss."""
    records = [r for r in json_log(work_dir) if 'loss' in r]
    assert [r['iter'] for r in records] == list(range(first_iter, last_iter + 1)), records
    for r in records:
        assert math.isfinite(r['loss']), r
    return records


def check_coco_metrics(metrics):
    """bbox and segm AP from CocoMetric: numbers in [0, 1] (-1: no object of that size)."""
    for task in ('bbox', 'segm'):
        for k in ('mAP', 'mAP_50', 'mAP_75'):
            v = metrics[f'coco/{task}_{k}']
            assert isinstance(v, float) and 0.0 <= v <= 1.0, (task, k, v)
        for k in ('mAP_s', 'mAP_m', 'mAP_l'):
            v = metrics[f'coco/{task}_{k}']
            assert isinstance(v, float) and (0.0 <= v <= 1.0 or v == -1.0), (task, k, v)


def load_ckpt(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# The mini Mask R-CNN on top of a repository config: 64-channel FPN / heads, 64 sampled
# anchors and RoIs, few proposals, 128 px, batch 2, no workers, iteration-based schedule
# without validation during training (`mim test` evaluates), a checkpoint at the end.
DET_BODY = """
model = dict(
    backbone=backbone_override,
    neck=dict(in_channels=backbone_channels, out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64,
                       num_classes=len(classes))),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    # score_thr 0: keep 20 detections per image even from an untrained classifier
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50),
                  rcnn=dict(score_thr=0.0, max_per_img=20)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 filter_cfg=dict(filter_empty_gt=True, min_size=0),
                 pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
"""

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def e2e_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('e2e')


@pytest.fixture(scope='module')
def coco_root(e2e_dir):
    from mmslab.datasets import SHAPE_CLASSES, make_coco_instances
    assert tuple(SHAPE_CLASSES) == CLASSES
    root = osp.join(e2e_dir, 'coco')
    files = make_coco_instances(root, num_train=NUM_TRAIN, num_val=NUM_VAL,
                                image_size=IMAGE_SIZE, seed=0)
    assert osp.isfile(files['train']) and osp.isfile(files['val'])
    return root + '/'


@pytest.fixture(scope='module')
def ade_root(e2e_dir):
    from mmslab.datasets import make_ade_semantic
    root = osp.join(e2e_dir, 'ade')
    make_ade_semantic(root, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE,
                      seed=0)
    return root


@pytest.fixture(scope='module')
def det_pvt_cfg(e2e_dir, coco_root):
    """The demo Mask R-CNN + SLAB-PVT config (PRepBN schedule LayerNorm -> RepBN,
    norm_eval=False) with a mini SLAB-PVT. The schedule decays over half of the run
    (``PVT_DECAY``), so that lam reaches 0 before the last iteration: the final checkpoint
    is a converged model that folds (tools/deploy.py refuses lam != 0)."""
    return write_config(
        osp.join(e2e_dir, 'mask_rcnn_slab_pvt_mini.py'), DEMO_DET,
        'backbone_override = dict(pretrain_img_size=image_size, **backbone)\n' + DET_BODY
        + f"custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters={PVT_DECAY})]\n",
        data_root=coco_root, image_size=IMAGE_SIZE, classes=CLASSES, max_iters=TRAIN_ITERS,
        backbone=PVT_MINI, backbone_channels=PVT_MINI_CHANNELS)


@pytest.fixture(scope='module')
def det_pvt_trained(e2e_dir, det_pvt_cfg):
    work_dir = osp.join(e2e_dir, 'work_det_pvt')
    out, elapsed = mim('train', 'mmdet', det_pvt_cfg, '--work-dir', work_dir,
                       log_file=osp.join(e2e_dir, 'train_det_pvt.log'))
    ckpt = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
    return dict(work_dir=work_dir, ckpt=ckpt, out=out, time=elapsed)


@pytest.fixture(scope='module')
def det_pvt_tested(e2e_dir, det_pvt_cfg, det_pvt_trained):
    work_dir = osp.join(e2e_dir, 'test_det_pvt')
    preds = osp.join(work_dir, 'preds.pkl')
    out, elapsed = mim('test', 'mmdet', det_pvt_cfg, '--checkpoint', det_pvt_trained['ckpt'],
                       '--work-dir', work_dir, '--out', preds,
                       log_file=osp.join(e2e_dir, 'test_det_pvt.log'))
    return dict(metrics=eval_metrics(work_dir), preds=preds, out=out, time=elapsed)


# ----------------------------------------------------------------------------- mmdet


@pytest.mark.slow
def test_mim_train_test_mask_rcnn_slab_pvt(det_pvt_trained, det_pvt_tested):
    """`mim train mmdet` + `mim test mmdet` (CocoMetric): box and mask AP of a mini
    SLAB-PVT Mask R-CNN trained for a few iterations."""
    work_dir = det_pvt_trained['work_dir']
    records = check_training_log(work_dir, 1, TRAIN_ITERS)
    # the PRepBN schedule ran: lam decays from 1 (LayerNorm) to 0 (RepBN)
    lams = [r['prepbn_lam'] for r in records]
    assert lams == pytest.approx([max(0.0, 1 - i / (PVT_DECAY * TRAIN_ITERS))
                                  for i in range(TRAIN_ITERS)], abs=1e-6)
    assert lams[-1] == 0.0
    ckpt = load_ckpt(det_pvt_trained['ckpt'])
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    assert ckpt['meta']['dataset_meta']['classes'] == CLASSES
    assert any('.norm1.norm2.bn.running_mean' in k for k in ckpt['state_dict'])  # RepBN
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == det_pvt_trained['ckpt']

    metrics = det_pvt_tested['metrics']
    check_coco_metrics(metrics)
    assert 'bbox_mAP_copypaste' in det_pvt_tested['out']  # pycocotools ran, both tasks
    assert 'segm_mAP_copypaste' in det_pvt_tested['out']
    with open(det_pvt_tested['preds'], 'rb') as f:
        preds = pickle.load(f)
    assert sorted(p['img_id'] for p in preds) == list(range(1, NUM_VAL + 1))
    assert all(len(p['pred_instances']['scores']) > 0 for p in preds)


@pytest.fixture(scope='module')
def det_swin_cfg(e2e_dir, coco_root):
    """The flagship Mask R-CNN + SLAB-Swin-T config (stock mmdet Swin recipe, PRepBNHook
    r0=0) with a mini SLAB-Swin, from scratch."""
    return write_config(
        osp.join(e2e_dir, 'mask_rcnn_slab_swin_mini.py'), SWIN_DET,
        'backbone_override = dict(pretrain_img_size=image_size, drop_path_rate=0.0,\n'
        '                         norm_eval=False, init_cfg=None, **backbone)\n' + DET_BODY,
        data_root=coco_root, image_size=IMAGE_SIZE, classes=CLASSES, max_iters=TRAIN_ITERS,
        backbone=SWIN_MINI, backbone_channels=SWIN_MINI_CHANNELS)


@pytest.mark.slow
def test_mim_train_test_mask_rcnn_slab_swin(e2e_dir, det_swin_cfg):
    """The flagship Mask R-CNN + SLAB-Swin-T config with a mini SLAB-Swin, from scratch:
    `mim train` + `mim test` -> box / mask AP."""
    cfg = det_swin_cfg
    work_dir = osp.join(e2e_dir, 'work_det_swin')
    mim('train', 'mmdet', cfg, '--work-dir', work_dir,
        log_file=osp.join(e2e_dir, 'train_det_swin.log'))
    records = check_training_log(work_dir, 1, TRAIN_ITERS)
    assert all(r['prepbn_lam'] == 0.0 for r in records)  # r0=0: pure RepBN
    ckpt_file = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
    ckpt = load_ckpt(ckpt_file)
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    assert 'backbone.stages.3.blocks.1.attn.relative_position_bias_table' in ckpt['state_dict']

    test_dir = osp.join(e2e_dir, 'test_det_swin')
    out, _ = mim('test', 'mmdet', cfg, '--checkpoint', ckpt_file, '--work-dir', test_dir,
                 log_file=osp.join(e2e_dir, 'test_det_swin.log'))
    check_coco_metrics(eval_metrics(test_dir))
    assert 'segm_mAP_copypaste' in out


@pytest.mark.slow
def test_mim_train_resume(e2e_dir, det_pvt_cfg, det_pvt_trained):
    """`mim train --resume <ckpt>` with a larger max_iters continues the run at the saved
    iteration: model, AdamW state, LR schedule, message hub and the PRepBN schedule."""
    more = TRAIN_ITERS + 2
    cfg = write_config(
        osp.join(e2e_dir, 'mask_rcnn_slab_pvt_mini_resume.py'), det_pvt_cfg, """
        train_cfg = dict(max_iters=max_iters)
        default_hooks = dict(checkpoint=dict(interval=max_iters))
        """, max_iters=more)
    work_dir = osp.join(e2e_dir, 'work_det_pvt_resume')
    src = det_pvt_trained['ckpt']
    mim('train', 'mmdet', cfg, '--work-dir', work_dir, '--resume', src,
        log_file=osp.join(e2e_dir, 'resume_det_pvt.log'))
    log = text_log(work_dir)
    assert f'Load checkpoint from {src}' in log
    assert f'resumed epoch: 0, iter: {TRAIN_ITERS}' in log
    # only the new iterations ran
    records = check_training_log(work_dir, TRAIN_ITERS + 1, more)
    # PRepBNHook is keyed on runner.iter: lam of the resumed iterations follows the new
    # max_iters (decay over PVT_DECAY * max_iters)
    for r in records:
        i = r['iter'] - 1
        assert r['prepbn_lam'] == pytest.approx(max(0.0, 1 - i / (PVT_DECAY * more)),
                                                abs=1e-3)

    final = load_ckpt(osp.join(work_dir, f'iter_{more}.pth'))
    assert final['meta']['iter'] == more
    runtime = final['message_hub']['runtime_info']
    assert runtime['max_iters'] == more and runtime['iter'] == more - 1
    # AdamW's step counters went on from the resumed optimizer state
    steps = {int(s['step']) for s in final['optimizer']['state'].values()}
    assert steps == {more}, steps
    before = load_ckpt(src)
    assert {int(s['step']) for s in before['optimizer']['state'].values()} == {TRAIN_ITERS}
    assert not all(torch.equal(before['state_dict'][k], v)
                   for k, v in final['state_dict'].items())


@pytest.mark.slow
def test_deploy_folded_detector_same_coco_ap(e2e_dir, det_pvt_cfg, det_pvt_trained,
                                            det_pvt_tested):
    """`tools/deploy.py` folds the trained detector; `mim test` of the written
    `<stem>_config.py` + folded checkpoint gives the unfolded model's AP and detections."""
    out_dir = osp.join(e2e_dir, 'deploy')
    folded = osp.join(out_dir, 'slab_pvt_mini_folded.pth')
    folded_cfg = osp.join(out_dir, 'slab_pvt_mini_folded_config.py')
    out, _ = run([sys.executable, DEPLOY, det_pvt_cfg, det_pvt_trained['ckpt'], folded],
                 osp.join(e2e_dir, 'deploy.log'))
    assert 'folded checkpoint saved' in out
    assert osp.isfile(folded) and osp.isfile(folded_cfg)
    state = load_ckpt(folded)['state_dict']
    trained = load_ckpt(det_pvt_trained['ckpt'])['state_dict']
    assert not any(k.startswith('backbone.') and ('.bn.' in k or '.alpha' in k) for k in state)
    assert len([k for k in state if k.startswith('backbone.')]) < \
        len([k for k in trained if k.startswith('backbone.')])
    for k in state:  # the rest of the detector is untouched
        if not k.startswith('backbone.'):
            assert torch.equal(state[k], trained[k]), k

    work_dir = osp.join(e2e_dir, 'test_det_pvt_folded')
    preds_file = osp.join(work_dir, 'preds.pkl')
    out, _ = mim('test', 'mmdet', folded_cfg, '--checkpoint', folded, '--work-dir', work_dir,
                 '--out', preds_file, log_file=osp.join(e2e_dir, 'test_det_pvt_folded.log'))
    # the deploy=True model took every key of the folded file
    assert 'missing keys in source state_dict' not in out
    assert 'unexpected key in source state_dict' not in out
    metrics, ref = eval_metrics(work_dir), det_pvt_tested['metrics']
    check_coco_metrics(metrics)
    for task in ('bbox', 'segm'):
        for k in ('mAP', 'mAP_50', 'mAP_75'):
            key = f'coco/{task}_{k}'
            assert metrics[key] == pytest.approx(ref[key], abs=1e-3), key

    # the detections themselves (AP of a 4-iteration model is near 0): same images, same
    # number of detections, scores to 1e-4 and the top-5 boxes to 0.05 px
    with open(det_pvt_tested['preds'], 'rb') as f:
        before = pickle.load(f)
    with open(preds_file, 'rb') as f:
        after = pickle.load(f)
    assert [p['img_id'] for p in before] == [p['img_id'] for p in after]
    for b, a in zip(before, after):
        pb, pa = b['pred_instances'], a['pred_instances']
        assert len(pb['scores']) == len(pa['scores']) > 0
        np.testing.assert_allclose(np.sort(pa['scores'].numpy()),
                                   np.sort(pb['scores'].numpy()), atol=1e-4)
        for j in torch.argsort(pb['scores'], descending=True)[:5].tolist():
            dist = (pa['bboxes'] - pb['bboxes'][j]).abs().max(dim=1).values
            dist[pa['labels'] != pb['labels'][j]] = float('inf')
            dist[(pa['scores'] - pb['scores'][j]).abs() > 1e-4] = float('inf')
            assert dist.min().item() < 0.05, (b['img_id'], j)


# ----------------------------------------------------------------------------- mmseg


@pytest.mark.slow
def test_mim_train_test_upernet_slab_swin(e2e_dir, ade_root):
    """`mim train mmsegmentation` + `mim test mmsegmentation` of the demo UperNet +
    SLAB-Swin config (mini) on the ADE-layout synthetic set: mIoU in [0, 100]."""
    cfg = write_config(
        osp.join(e2e_dir, 'upernet_slab_swin_mini.py'), DEMO_SEG, """
        crop_size = (image_size, image_size)
        model = dict(
            data_preprocessor=dict(size=crop_size),
            backbone=dict(pretrain_img_size=image_size, **backbone),
            decode_head=dict(in_channels=backbone_channels, channels=64),
            auxiliary_head=dict(in_channels=backbone_channels[2], channels=32))
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5),
                 keep_ratio=True),
            dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackSegInputs')
        ]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=crop_size, keep_ratio=True),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')
        ]
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(data_root=data_root, pipeline=train_pipeline))
        test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                               dataset=dict(data_root=data_root, pipeline=test_pipeline))
        val_dataloader = None
        val_evaluator = None
        val_cfg = None
        train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
        """, data_root=ade_root, image_size=IMAGE_SIZE, max_iters=TRAIN_ITERS,
        backbone=SWIN_MINI, backbone_channels=SWIN_MINI_CHANNELS)
    work_dir = osp.join(e2e_dir, 'work_seg_swin')
    mim('train', 'mmsegmentation', cfg, '--work-dir', work_dir,
        log_file=osp.join(e2e_dir, 'train_seg_swin.log'))
    records = check_training_log(work_dir, 1, TRAIN_ITERS)
    assert all(math.isfinite(r['decode.loss_ce']) for r in records)
    ckpt_file = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
    ckpt = load_ckpt(ckpt_file)
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    assert ckpt['meta']['dataset_meta']['classes'] == ('background', ) + CLASSES

    test_dir = osp.join(e2e_dir, 'test_seg_swin')
    mim('test', 'mmsegmentation', cfg, '--checkpoint', ckpt_file, '--work-dir', test_dir,
        log_file=osp.join(e2e_dir, 'test_seg_swin.log'))
    metrics = eval_metrics(test_dir)
    for k in ('mIoU', 'aAcc', 'mAcc'):
        assert isinstance(metrics[k], float) and 0.0 <= metrics[k] <= 100.0, (k, metrics)


# ----------------------------------------------------------------------------- swap


@pytest.mark.slow
def test_backbone_swap_into_stock_retinanet(e2e_dir, coco_root):
    """A stock mmdet config with only its backbone replaced by SLABSwin (and the neck's
    in_channels) builds, trains a few iterations and evaluates (in-process Runner)."""
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.runner import Runner

    cfg_file = write_config(osp.join(e2e_dir, 'retinanet_slab_swin_mini.py'),
                            'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', """
        custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)
        model = dict(
            # --- the swap (the README recipe): the backbone and the neck's in_channels ---
            backbone=dict(_delete_=True, type='SLABSwin', init_cfg=None, **backbone),
            neck=dict(in_channels=backbone_channels,
                      # --- the rest: run on the synthetic set in seconds (narrower FPN
                      # and head, 4 classes, 128 px; score_thr 0 so that a 3-iteration
                      # model has detections to evaluate) ---
                      out_channels=64),
            bbox_head=dict(num_classes=len(classes), in_channels=64, feat_channels=64),
            test_cfg=dict(score_thr=0.0))
        metainfo = dict(classes=classes)
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs')
        ]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs',
                 meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
        ]
        train_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
        val_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
        test_evaluator = val_evaluator
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=max_iters)
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
        optim_wrapper = dict(clip_grad=dict(max_norm=10.0))
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(by_epoch=False, interval=max_iters))
        log_processor = dict(by_epoch=False)
        """, data_root=coco_root, image_size=IMAGE_SIZE, classes=CLASSES, max_iters=3,
                            backbone=SWIN_MINI, backbone_channels=SWIN_MINI_CHANNELS)
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = osp.join(e2e_dir, 'work_retinanet_swin')
    # only the backbone (and the neck's width) differ from the stock model
    stock = get_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
    assert cfg.model.type == stock.model.type == 'RetinaNet'
    assert cfg.model.neck.type == stock.model.neck.type
    assert cfg.model.neck.start_level == stock.model.neck.start_level
    assert cfg.model.bbox_head.type == stock.model.bbox_head.type

    runner = Runner.from_cfg(cfg)
    runner.train()
    from mmslab.models import SLABSwin
    assert isinstance(runner.model.backbone, SLABSwin)
    check_training_log(cfg.work_dir, 1, 3)
    assert load_ckpt(osp.join(cfg.work_dir, 'iter_3.pth'))['meta']['iter'] == 3
    ap = runner.message_hub.get_scalar('val/coco/bbox_mAP').current()
    assert 0.0 <= ap <= 1.0


# ----------------------------------------------------------------------------- sync BN


@pytest.mark.slow
@pytest.mark.parametrize('backbone', [
    dict(type='SLABPVT', **PVT_MINI, norm_eval=False),
    dict(type='SLABSwin', **SWIN_MINI, norm_eval=False),
], ids=['SLABPVT', 'SLABSwin'])
def test_sync_bn_conversion(backbone):
    """`sync_bn='torch'` (the Runner calls mmengine's convert_sync_batchnorm in distributed
    runs) turns every RepBN BatchNorm1d into SyncBatchNorm without changing the state dict
    or the function; revert_sync_batchnorm (single-process runs) and the deploy fold still
    work on the converted model. (torch's SyncBatchNorm needs GPUs to *train* with DDP.)"""
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
    from mmengine.registry import MODELS

    from mmslab.models import RepBN, reparameterize

    torch.manual_seed(0)
    model = MODELS.build(backbone)
    model.init_weights()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(x + torch.randn_like(x))
    model.eval()
    with torch.no_grad():
        ref = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert n_bn > 0

    synced = convert_sync_batchnorm(model, 'torch')
    repbns = [m for m in synced.modules() if isinstance(m, RepBN)]
    assert len(repbns) == n_bn
    assert all(type(m.bn) is torch.nn.SyncBatchNorm for m in repbns)
    assert not any(type(m) is torch.nn.BatchNorm1d for m in synced.modules())
    new_state = synced.state_dict()
    assert list(new_state) == list(state)
    assert all(torch.equal(new_state[k], v) for k, v in state.items())
    synced.eval()
    with torch.no_grad():
        for a, b in zip(synced(x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        synced.train()  # single process: SyncBatchNorm normalises like BatchNorm
        outs = synced(x)
    assert all(torch.isfinite(o).all() for o in outs)

    reverted = revert_sync_batchnorm(synced).eval()
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in reverted.modules())
    reverted.load_state_dict(state)
    with torch.no_grad():
        for a, b in zip(reverted(x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        reparameterize(reverted)
        for a, b in zip(reverted(x), ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_distributed_two_process_training(e2e_dir, det_pvt_cfg):
    """2 processes (torch.distributed.run + mmdet's tools/train.py --launcher pytorch,
    gloo on CPU) train the mini detector with the PRepBN setting of every full config
    (PRepBNHook r0=0: pure RepBN, per-process BatchNorm); both ranks end with identical
    parameters after seeing different images."""
    import mmdet
    from mmengine.config import Config

    train_script = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(train_script)
    # What mmengine would build without model_wrapper_cfg -- MMDistributedDataParallel
    # with broadcast_buffers=False and the config's find_unused_parameters -- except
    # device_ids=None: mmengine always passes device_ids=[LOCAL_RANK], which DDP rejects
    # for a CPU model; an explicit model_wrapper_cfg.device_ids wins (Runner.wrap_model).
    find_unused = bool(Config.fromfile(det_pvt_cfg).get('find_unused_parameters', False))
    iters = 3
    dump_dir = osp.join(e2e_dir, 'ddp_ranks')
    cfg = write_config(
        osp.join(e2e_dir, 'mask_rcnn_slab_pvt_mini_ddp.py'), det_pvt_cfg, """
        custom_imports = dict(imports=['mmslab', '_dist_helper'], allow_failed_imports=False)
        custom_hooks = [
            dict(type='PRepBNHook', r0=0.0),
            dict(type='MMSlabDumpWeightsHook', out_dir=dump_dir)
        ]
        model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                 broadcast_buffers=False,
                                 find_unused_parameters=find_unused_parameters)
        env_cfg = dict(dist_cfg=dict(backend='gloo'))
        train_cfg = dict(max_iters=max_iters)
        default_hooks = dict(checkpoint=dict(interval=max_iters))
        """, dump_dir=dump_dir, find_unused_parameters=find_unused, max_iters=iters)
    work_dir = osp.join(e2e_dir, 'work_det_ddp')
    pythonpath = os.pathsep.join(p for p in (TESTS, os.environ.get('PYTHONPATH')) if p)
    run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(free_port()), train_script, cfg, '--launcher', 'pytorch',
         '--work-dir', work_dir], osp.join(e2e_dir, 'train_ddp.log'),
        env=dict(PYTHONPATH=pythonpath, OMP_NUM_THREADS='1'))

    ranks = [torch.load(osp.join(dump_dir, f'rank{r}.pth'), map_location='cpu')
             for r in range(2)]
    for r, d in enumerate(ranks):
        assert (d['rank'], d['world_size'], d['iter']) == (r, 2, iters)
        assert d['wrapper'] == 'MMDistributedDataParallel' and d['backend'] == 'gloo'
        assert len(d['img_ids']) == iters and all(len(ids) == 2 for ids in d['img_ids'])
    # data parallel: disjoint images in every iteration; the first 2 iterations are one
    # pass over the 8 training images
    for a, b in zip(ranks[0]['img_ids'], ranks[1]['img_ids']):
        assert not set(a) & set(b), (a, b)
    seen = [i for d in ranks for ids in d['img_ids'][:2] for i in ids]
    assert sorted(seen) == list(range(1, NUM_TRAIN + 1))
    # identical parameters on both ranks (same init broadcast, all-reduced gradients)
    s0, s1 = ranks[0]['state_dict'], ranks[1]['state_dict']
    assert list(s0) == list(s1)
    for name in ranks[0]['param_names']:
        assert torch.equal(s0[name], s1[name]), name
    # per-process BatchNorm: RepBN's running statistics come from each rank's own images
    bn_means = [k for k in s0 if k.endswith('.bn.running_mean')]
    assert bn_means and any(not torch.equal(s0[k], s1[k]) for k in bn_means)
    # the checkpoint rank 0 wrote holds the same weights
    ckpt = load_ckpt(osp.join(work_dir, f'iter_{iters}.pth'))
    assert ckpt['meta']['iter'] == iters
    for name in ranks[0]['param_names']:
        assert torch.equal(ckpt['state_dict'][name], s0[name]), name
