"""Shared pieces of the end-to-end tests (tests/test_e2e*.py): constants, the mini
detector's config body, the helpers that write configs, run ``mim`` / the tools in
subprocesses and read the runs' logs, and the shared training run's schedule. The
session-scoped fixtures that train once for every e2e module are in ``conftest.py``.

Importable as ``_e2e`` (``pythonpath`` in pyproject.toml).
"""
import glob
import json
import math
import os
import os.path as osp
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import torch

from _mini import mini_kwargs
from prepbn.runs import codebase_script

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


def train_py(package, *args, log_file, **kwargs):
    """``<package>/tools/train.py ... --launcher none``: the command `mim train` starts,
    without the interpreter `mim` itself needs and the one it starts for ``train.py -h``
    (~6 s of a core), where `mim` is not what a test is about (`mim train` itself is
    tested by the shared runs)."""
    return run([sys.executable, codebase_script(package, 'train'), *args, '--launcher', 'none'],
               log_file, **kwargs)


def runner_test(cfg_file, checkpoint, work_dir, out=None):
    """What mmdet's ``tools/test.py CONFIG CHECKPOINT --work-dir W [--out PKL]`` runs, in
    this process: a real mmengine Runner from the config, ``load_from`` the checkpoint,
    its test loop (``--out``: mmdet's DumpDetResults). The metrics it returns are also
    logged to ``work_dir`` (:func:`eval_metrics`)."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir, cfg.load_from = work_dir, checkpoint
    # a visualizer of its own: the configs name theirs 'visualizer', and mmengine hands a
    # later Runner of this process the instance of that name, which writes into the
    # first Runner's log directory
    cfg.visualizer.name = f'runner_test:{work_dir}'
    runner = Runner.from_cfg(cfg)
    if out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    return runner.test()


class Background:
    """A command started from the repository root without waiting for it, in a process
    group of its own (a SIGKILL then reaches ``mim`` and the training process it starts),
    its output (unbuffered) to ``log_file``. Independent runs overlap this way."""

    def __init__(self, args, log_file, env=None):
        full_env = dict(os.environ, PYTHONUNBUFFERED='1')
        full_env.update(env or {})
        self.args, self.log_file = [str(a) for a in args], str(log_file)
        self.start = time.time()
        with open(self.log_file, 'w') as f:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=f,
                                         stderr=subprocess.STDOUT, env=full_env,
                                         start_new_session=True)

    def output(self) -> str:
        with open(self.log_file) as f:
            return f.read()

    def stop(self):
        """SIGKILL the process group if it still runs; wait for it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def wait(self, timeout=SUBPROCESS_TIMEOUT):
        """Wait for the command; its output and wall time. Fails with the end of the
        output if it fails (or is killed at ``timeout`` seconds from its start)."""
        try:
            self.proc.wait(timeout=max(1.0, self.start + timeout - time.time()))
        except subprocess.TimeoutExpired:
            self.stop()
        elapsed = time.time() - self.start
        out = self.output()
        assert self.proc.returncode == 0, (
            f'`{" ".join(self.args)}` exited with {self.proc.returncode} after '
            f'{elapsed:.0f} s; end of {self.log_file}:\n{_tail(out)}')
        return out, elapsed

    def kill_when(self, pattern, timeout=SUBPROCESS_TIMEOUT):
        """SIGKILL the process group at a random moment (within 20 ms) after a line of
        its output matches the regex ``pattern``; return the output up to the kill. Fails
        if the command ends by itself or nothing matches within ``timeout`` seconds."""
        regex = re.compile(pattern, re.M)
        deadline = self.start + timeout
        while not regex.search(self.output()):
            assert self.proc.poll() is None, (
                f'`{" ".join(self.args)}` ended ({self.proc.returncode}) before its output '
                f'matched {pattern!r}:\n{_tail(self.output())}')
            assert time.time() < deadline, f'no {pattern!r} in {timeout} s: {self.log_file}'
            time.sleep(0.02)
        time.sleep(random.uniform(0, 0.02))  # anywhere in an iteration
        self.stop()
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode
        return self.output()


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


def json_runs(work_dir):
    """The json log records of every run in ``work_dir`` (a killed run and the run that
    resumed it share one), one list per run in start order; a line cut by a kill is
    skipped."""
    runs = []
    dirs = sorted(d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d))
    for path in filter(None, (_json_path(d) for d in dirs)):
        records = []
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        runs.append(records)
    return runs


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


# The shared SLAB-PVT detector run (``det_pvt_run`` in conftest.py): the mini Mask R-CNN
# above, epoch-based, validation (CocoMetric + a checksum of every prediction) and a
# checkpoint after every epoch, PRepBNHook(r0=1) decaying over 0.8 of the run: the
# epoch-1 checkpoint is mid-schedule (lam 0.6875: LayerNorm and RepBN mixed), the last
# one is converged (lam 0) and folds.
RUN_BATCH = 2
ITERS_PER_EPOCH = NUM_TRAIN // RUN_BATCH
RUN_EPOCHS = 3
RUN_ITERS = RUN_EPOCHS * ITERS_PER_EPOCH
RUN_DECAY = 0.8
RUN_BODY = """
custom_imports = dict(imports=['mmslab', '_prepbn_e2e_helper'], allow_failed_imports=False)
evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json',
         metric=['bbox', 'segm'], format_only=False, backend_args=None),
    dict(type='MMSlabPredChecksum'),
]
val_dataloader = test_dataloader
val_evaluator = evaluator
test_evaluator = evaluator
val_cfg = dict(type='ValLoop')
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=1)
custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=decay)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=max_epochs))
log_processor = dict(by_epoch=True)
randomness = dict(seed=0)
"""
METRIC_KEYS = [f'coco/{t}_{k}' for t in ('bbox', 'segm')
               for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')] + [
                   f'checksum/{k}' for k in ('num', 'scores', 'bboxes', 'masks')]


def run_lam(i: int, max_iters: int = RUN_ITERS) -> float:
    """PRepBNHook(r0=1, decay_iters=RUN_DECAY) at 0-based iteration ``i``."""
    return max(0.0, 1.0 - i / (RUN_DECAY * max_iters))


def helper_env() -> dict:
    """The environment of a subprocess that imports the tests' helper modules."""
    return dict(PYTHONPATH=os.pathsep.join(p for p in (TESTS, os.environ.get('PYTHONPATH'))
                                           if p))


# ------------------------------------------------------------- mmdeploy -> ONNX Runtime
MMDEPLOY_TOOL = osp.join(ROOT, 'tools', 'mmdeploy_ort.py')
TINY_AP_DIFF = 0.05  # AP gate of the tiny detectors (see deploy_to_ort_and_check)


def deploy_to_ort_and_check(work, name, cfg, ckpt):
    out_dir = osp.join(work, f'ort_{name}')
    # A 4-iteration detector has AP ~0.02: mmdeploy's post-processing (top class per RoI,
    # one RPN NMS over all levels) moves such near-random detections by a few AP points.
    # The conversion itself is checked exactly below; the 0.01 AP target is measured on
    # the trained demo detector (`make deploy-demo`, README).
    out, _ = run([sys.executable, MMDEPLOY_TOOL, cfg, ckpt, '--work-dir', out_dir,
                  '--max-ap-diff', str(TINY_AP_DIFF)], osp.join(work, f'ort_{name}.log'),
                 env=helper_env())
    with open(osp.join(out_dir, 'report.json')) as f:
        report = json.load(f)
    # the tool passes the checkout's deploy config (it inherits the packaged one)
    assert report['deploy_cfg'] == osp.join(ROOT, 'configs', 'mmdeploy',
                                            'mask-rcnn_onnxruntime_dynamic.py')
    # folded first (tools/deploy.py's fold), the trained checkpoint untouched
    assert report['folded_checkpoint'] == osp.join(out_dir, 'folded.pth')
    assert report['fold_relative_error'] <= 1e-4
    # mmdeploy's ONNX: opset 17, dynamic batch / height / width, standard ops only
    import onnx  # the 'deploy' extra
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
