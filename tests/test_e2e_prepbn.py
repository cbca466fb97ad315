"""End to end (slow): a checkpoint taken mid-way through the PRepBN schedule is the network
the training run validated.

`mim train mmdet` trains the mini SLAB-PVT Mask R-CNN of tests/test_e2e.py (the demo config,
with PRepBNHook r0=1 decaying over 0.8 of the run) for 3 short epochs with validation and a
checkpoint after every epoch; then `mim test mmdet` of the epoch-1 checkpoint (lam = 0.6875:
LayerNorm and RepBN mixed) must reproduce the validation the training run logged after
epoch 1 -- COCO AP and a checksum of every prediction (``_prepbn_e2e_helper``) -- and the
checkpoint must hold that lam; `tools/deploy.py` must refuse to fold it and say why.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest

from test_e2e import (CLASSES, DEMO_DET, DEPLOY, DET_BODY, IMAGE_SIZE, PVT_MINI,
                      PVT_MINI_CHANNELS, ROOT, TESTS, check_coco_metrics, eval_metrics,
                      json_log, load_ckpt, mim, write_config)

NUM_TRAIN, NUM_VAL, BATCH = 8, 4, 2
ITERS_PER_EPOCH = NUM_TRAIN // BATCH
EPOCHS = 3
MAX_ITERS = EPOCHS * ITERS_PER_EPOCH
DECAY = 0.8  # PRepBNHook(r0=1.0, decay_iters=0.8): lam still > 0 at the epoch-1 checkpoint

# Epoch-based training with validation (and a checkpoint) after every epoch; the val and
# test splits and evaluators are the same, with the prediction checksum next to CocoMetric.
PREPBN_BODY = """
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


def lam_at(i: int) -> float:
    """PRepBNHook(r0=1, decay_iters=0.8) at 0-based iteration ``i``."""
    return max(0.0, 1.0 - i / (DECAY * MAX_ITERS))


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    from mmslab.datasets import make_coco_instances
    root = tmp_path_factory.mktemp('e2e_prepbn')
    coco = osp.join(root, 'coco')
    make_coco_instances(coco, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE,
                        seed=0)
    cfg = write_config(
        osp.join(root, 'mask_rcnn_slab_pvt_mini_prepbn.py'), DEMO_DET,
        'backbone_override = dict(pretrain_img_size=image_size, **backbone)\n' + DET_BODY
        + PREPBN_BODY,
        data_root=coco + '/', image_size=IMAGE_SIZE, classes=CLASSES, max_iters=MAX_ITERS,
        backbone=PVT_MINI, backbone_channels=PVT_MINI_CHANNELS, max_epochs=EPOCHS,
        decay=DECAY)
    env = dict(PYTHONPATH=os.pathsep.join(p for p in (TESTS, os.environ.get('PYTHONPATH'))
                                          if p))
    return dict(root=str(root), cfg=cfg, env=env)


@pytest.mark.slow
def test_mid_schedule_checkpoint_tests_as_validated(work):
    root, cfg, env = work['root'], work['cfg'], work['env']
    work_dir = osp.join(root, 'work')
    mim('train', 'mmdet', cfg, '--work-dir', work_dir, log_file=osp.join(root, 'train.log'),
        env=env)
    records = json_log(work_dir)
    train = [r for r in records if 'loss' in r]
    assert len(train) == MAX_ITERS
    for r in train:  # the hook's schedule, logged per iteration (1-based 'iter')
        assert r['prepbn_lam'] == pytest.approx(lam_at(r['iter'] - 1), abs=1e-4)
    val = {r['step']: r for r in records if 'coco/bbox_mAP' in r}
    assert sorted(val) == list(range(1, EPOCHS + 1)), records

    epoch = 1
    lam = lam_at(epoch * ITERS_PER_EPOCH - 1)  # set before the epoch's last iteration
    assert 0.0 < lam < 1.0 and lam == 0.6875
    ckpt_file = osp.join(work_dir, f'epoch_{epoch}.pth')
    ckpt = load_ckpt(ckpt_file)
    assert ckpt['meta']['epoch'] == epoch and ckpt['meta']['iter'] == epoch * ITERS_PER_EPOCH
    lams = {k: v for k, v in ckpt['state_dict'].items()
            if k.startswith('backbone.') and k.endswith('.lam')}
    assert len(lams) == 2 * sum(PVT_MINI['depths']) + len(PVT_MINI['depths'])  # every PRepBN
    assert all(v.dim() == 0 and float(v) == lam for v in lams.values()), lams
    assert float(load_ckpt(osp.join(work_dir, f'epoch_{EPOCHS}.pth'))['state_dict'][
        'backbone.stages.0.patch_embed.norm.lam']) == 0.0  # the schedule ended at RepBN

    test_dir = osp.join(root, 'test')
    mim('test', 'mmdet', cfg, '--checkpoint', ckpt_file, '--work-dir', test_dir,
        log_file=osp.join(root, 'test.log'), env=env)
    tested = eval_metrics(test_dir)
    check_coco_metrics(tested)
    logged = val[epoch]
    assert tested['checksum/num'] > 0 and tested['checksum/scores'] > 0
    for k in METRIC_KEYS:
        assert tested[k] == pytest.approx(logged[k], rel=1e-6, abs=1e-6), (k, tested, logged)
    # ... and the validation of another point of the schedule differs (the checksum sees it)
    assert val[EPOCHS]['checksum/scores'] != pytest.approx(logged['checksum/scores'],
                                                           rel=1e-6)

    # deploy refuses the mid-schedule checkpoint, with the reason and the way out
    out = osp.join(root, 'deploy', 'folded.pth')
    proc = subprocess.run([sys.executable, DEPLOY, cfg, ckpt_file, out], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, **env),
                          timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    msg = proc.stderr
    assert 'cannot fold a PRepBN with lam=0.6875' in msg, msg[-3000:]
    assert 'LayerNorm' in msg and 'lam = 0' in msg, msg[-3000:]
    assert not osp.exists(out)
