"""End to end (slow, CI): the shared mini SLAB-PVT Mask R-CNN run through the real mmdet /
mmdeploy tool chain.

One `mim train mmdet` (``det_pvt_run`` in conftest.py: the demo config with a mini
SLAB-PVT, 8 train / 4 val images of 128 px from :mod:`mmslab.datasets.synthetic`,
PRepBNHook r0=1 decaying over 0.8 of the run, validation and a checkpoint after every
epoch) serves every test here, so they share one module (one pytest-xdist worker): `mim
test` (CocoMetric, and the test of the last checkpoint equals the logged validation),
``train.py --resume``, `tools/deploy.py` + a test of the folded detector, the
mid-schedule checkpoint (LayerNorm and RepBN mixed) tested as it was validated and refused
by the fold, and mmdeploy -> ONNX Runtime. Nothing is mocked: real mmengine Runners (the
commands in subprocesses; the tests of the folded and the mid-schedule checkpoint are
mmdet's test loop in this process, ``_e2e.runner_test``: `mim test` is the first test's),
real mmdet models, pycocotools, real checkpoint files. Accuracy is *not*
asserted (a few iterations from scratch): metrics must exist and lie in their range;
deploy / resume / the mid-schedule test are checked exactly. The mmdeploy check
(``_e2e.deploy_to_ort_and_check``): the conversion is exact (ONNX Runtime against the same
mmdeploy-rewritten model in PyTorch: boxes / scores / mask probabilities to 1e-3, same
labels and detection counts), box and mask AP of ONNX Runtime within 0.05 of PyTorch's
(near-random detections; the 0.01 target is measured on the trained demo, README), and
the exported backbone (``tools/export_onnx.py --config``) at another size.
"""
import os.path as osp
import pickle
import sys

import numpy as np
import pytest
import torch
from _e2e import (CLASSES, DEPLOY, ITERS_PER_EPOCH, METRIC_KEYS, NUM_VAL, PVT_MINI,
                  RUN_EPOCHS, RUN_ITERS, check_coco_metrics, check_training_log,
                  deploy_to_ort_and_check, helper_env, load_ckpt, run, run_lam,
                  runner_test, text_log, train_py, write_config)


@pytest.mark.slow
def test_mim_train_test_mask_rcnn_slab_pvt(det_pvt_run, det_pvt_tested):
    """`mim train mmdet` (validation after every epoch) + `mim test mmdet` (CocoMetric) of
    the shared mini SLAB-PVT Mask R-CNN run: box and mask AP, and the test of the last
    checkpoint reproduces the validation the run logged after its last epoch."""
    work_dir = det_pvt_run['work_dir']
    records = check_training_log(work_dir, 1, RUN_ITERS)
    # the PRepBN schedule ran: lam decays from 1 (LayerNorm) to 0 (RepBN)
    lams = [r['prepbn_lam'] for r in records]
    assert lams == pytest.approx([run_lam(i) for i in range(RUN_ITERS)], abs=1e-6)
    assert lams[-1] == 0.0
    ckpt = load_ckpt(det_pvt_run['ckpt'])
    assert ckpt['meta']['iter'] == RUN_ITERS and ckpt['meta']['epoch'] == RUN_EPOCHS
    assert ckpt['meta']['dataset_meta']['classes'] == CLASSES
    assert any('.norm1.norm2.bn.running_mean' in k for k in ckpt['state_dict'])  # RepBN
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == det_pvt_run['ckpt']

    metrics = det_pvt_tested['metrics']
    check_coco_metrics(metrics)
    assert 'bbox_mAP_copypaste' in det_pvt_tested['out']  # pycocotools ran, both tasks
    assert 'segm_mAP_copypaste' in det_pvt_tested['out']
    with open(det_pvt_tested['preds'], 'rb') as f:
        preds = pickle.load(f)
    assert sorted(p['img_id'] for p in preds) == list(range(1, NUM_VAL + 1))
    assert all(len(p['pred_instances']['scores']) > 0 for p in preds)
    val = {r['step']: r for r in det_pvt_run['records'] if 'coco/bbox_mAP' in r}
    assert sorted(val) == list(range(1, RUN_EPOCHS + 1))
    for k in METRIC_KEYS:
        assert metrics[k] == pytest.approx(val[RUN_EPOCHS][k], rel=1e-6, abs=1e-6), k


@pytest.mark.slow
def test_mim_train_resume(e2e_dir, det_pvt_run):
    """``train.py --resume <ckpt>`` (what `mim train ... --resume <ckpt>` starts) with one
    more epoch continues the run at the saved iteration: model, AdamW state, LR schedule,
    message hub and the PRepBN schedule."""
    epochs = RUN_EPOCHS + 1
    more = epochs * ITERS_PER_EPOCH
    cfg = write_config(
        osp.join(e2e_dir, 'mask_rcnn_slab_pvt_mini_resume.py'), det_pvt_run['cfg'], """
        train_cfg = dict(max_epochs=max_epochs, val_interval=100)  # no validation
        """, max_epochs=epochs)
    work_dir = osp.join(e2e_dir, 'work_det_pvt_resume')
    src = det_pvt_run['ckpt']
    train_py('mmdet', cfg, '--work-dir', work_dir, '--resume', src,
             log_file=osp.join(e2e_dir, 'resume_det_pvt.log'), env=helper_env())
    log = text_log(work_dir)
    assert f'Load checkpoint from {src}' in log
    assert f'resumed epoch: {RUN_EPOCHS}, iter: {RUN_ITERS}' in log
    # only the new iterations ran
    records = check_training_log(work_dir, RUN_ITERS + 1, more)
    # PRepBNHook is keyed on runner.iter: lam of the resumed iterations follows the new
    # max_iters (decay over RUN_DECAY * max_iters)
    for r in records:
        assert r['prepbn_lam'] == pytest.approx(run_lam(r['iter'] - 1, more), abs=1e-3)

    final = load_ckpt(osp.join(work_dir, f'epoch_{epochs}.pth'))
    assert final['meta']['iter'] == more
    runtime = final['message_hub']['runtime_info']
    assert runtime['max_iters'] == more and runtime['iter'] == more - 1
    # AdamW's step counters went on from the resumed optimizer state
    steps = {int(s['step']) for s in final['optimizer']['state'].values()}
    assert steps == {more}, steps
    before = load_ckpt(src)
    assert {int(s['step']) for s in before['optimizer']['state'].values()} == {RUN_ITERS}
    assert not all(torch.equal(before['state_dict'][k], v)
                   for k, v in final['state_dict'].items())


@pytest.mark.slow
def test_deploy_folded_detector_same_coco_ap(e2e_dir, det_pvt_run, det_pvt_tested):
    """`tools/deploy.py` folds the trained detector; the written `<stem>_config.py` +
    folded checkpoint (mmdet's test loop, in a Runner here) gives the unfolded model's AP
    and detections."""
    out_dir = osp.join(e2e_dir, 'deploy')
    folded = osp.join(out_dir, 'slab_pvt_mini_folded.pth')
    folded_cfg = osp.join(out_dir, 'slab_pvt_mini_folded_config.py')
    out, _ = run([sys.executable, DEPLOY, det_pvt_run['cfg'], det_pvt_run['ckpt'], folded],
                 osp.join(e2e_dir, 'deploy.log'), env=helper_env())
    assert 'folded checkpoint saved' in out
    assert osp.isfile(folded) and osp.isfile(folded_cfg)
    state = load_ckpt(folded)['state_dict']
    trained = load_ckpt(det_pvt_run['ckpt'])['state_dict']
    assert not any(k.startswith('backbone.') and ('.bn.' in k or '.alpha' in k) for k in state)
    assert len([k for k in state if k.startswith('backbone.')]) < \
        len([k for k in trained if k.startswith('backbone.')])
    for k in state:  # the rest of the detector is untouched
        if not k.startswith('backbone.'):
            assert torch.equal(state[k], trained[k]), k

    work_dir = osp.join(e2e_dir, 'test_det_pvt_folded')
    preds_file = osp.join(work_dir, 'preds.pkl')
    metrics = runner_test(folded_cfg, folded, work_dir, out=preds_file)
    # the deploy=True model took every key of the folded file
    out = text_log(work_dir)
    assert 'Load checkpoint from' in out
    assert 'missing keys in source state_dict' not in out
    assert 'unexpected key in source state_dict' not in out
    ref = det_pvt_tested['metrics']
    check_coco_metrics(metrics)
    for task in ('bbox', 'segm'):
        for k in ('mAP', 'mAP_50', 'mAP_75'):
            key = f'coco/{task}_{k}'
            assert metrics[key] == pytest.approx(ref[key], abs=1e-3), key

    # the detections themselves (AP of a few-iteration model is near 0): same images, same
    # number of detections, scores to 1e-4 and the top-5 boxes to 0.05 px (float32: the
    # folded sums round differently)
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


@pytest.mark.slow
def test_mid_schedule_checkpoint_tests_as_validated(e2e_dir, det_pvt_run, load_tool):
    """Testing the epoch-1 checkpoint (lam = 0.6875; mmdet's test loop in a Runner here)
    reproduces the validation the run logged after epoch 1 (AP and the prediction
    checksum) and holds that lam; `tools/deploy.py` refuses to fold it and says why."""
    records = det_pvt_run['records']
    train = [r for r in records if 'loss' in r]
    assert len(train) == RUN_ITERS
    for r in train:  # the hook's schedule, logged per iteration (1-based 'iter')
        assert r['prepbn_lam'] == pytest.approx(run_lam(r['iter'] - 1), abs=1e-4)
    val = {r['step']: r for r in records if 'coco/bbox_mAP' in r}
    assert sorted(val) == list(range(1, RUN_EPOCHS + 1)), records

    epoch = 1
    lam = run_lam(epoch * ITERS_PER_EPOCH - 1)  # set before the epoch's last iteration
    assert 0.0 < lam < 1.0 and lam == 0.6875
    ckpt_file = det_pvt_run['ckpt_of'](epoch)
    ckpt = load_ckpt(ckpt_file)
    assert ckpt['meta']['epoch'] == epoch and ckpt['meta']['iter'] == epoch * ITERS_PER_EPOCH
    lams = {k: v for k, v in ckpt['state_dict'].items()
            if k.startswith('backbone.') and k.endswith('.lam')}
    assert len(lams) == 2 * sum(PVT_MINI['depths']) + len(PVT_MINI['depths'])  # every PRepBN
    assert all(v.dim() == 0 and float(v) == lam for v in lams.values()), lams
    assert float(load_ckpt(det_pvt_run['ckpt'])['state_dict'][
        'backbone.stages.0.patch_embed.norm.lam']) == 0.0  # the schedule ended at RepBN

    test_dir = osp.join(e2e_dir, 'test_det_pvt_epoch1')
    tested = runner_test(det_pvt_run['cfg'], ckpt_file, test_dir)
    check_coco_metrics(tested)
    logged = val[epoch]
    assert tested['checksum/num'] > 0 and tested['checksum/scores'] > 0
    for k in METRIC_KEYS:
        assert tested[k] == pytest.approx(logged[k], rel=1e-6, abs=1e-6), (k, tested, logged)
    # ... and the validation of another point of the schedule differs (the checksum sees it)
    assert val[RUN_EPOCHS]['checksum/scores'] != pytest.approx(logged['checksum/scores'],
                                                               rel=1e-6)

    # deploy refuses the mid-schedule checkpoint, with the reason and the way out
    # (tools/deploy.py's main() in this process; its command line: the test above)
    out = osp.join(e2e_dir, 'deploy_epoch1', 'folded.pth')
    with pytest.raises(ValueError, match='cannot fold a PRepBN with lam=0.6875') as err:
        load_tool('deploy').main([det_pvt_run['cfg'], ckpt_file, out])
    msg = str(err.value)
    assert 'LayerNorm' in msg and 'lam = 0' in msg, msg
    assert not osp.exists(out)


@pytest.mark.slow
def test_mmdeploy_ort_slab_pvt_mask_rcnn(e2e_dir, det_pvt_run, load_tool, capsys):
    work = e2e_dir
    report = deploy_to_ort_and_check(work, 'pvt', det_pvt_run['cfg'], det_pvt_run['ckpt'])
    # the folded detector's backbone alone, through tools/export_onnx.py --config (its
    # main() in this process; the dynamo exporter: tests/test_onnx.py)
    out = osp.join(work, 'pvt_backbone.onnx')
    capsys.readouterr()
    assert load_tool('export_onnx').main([
        out, '--config', report['folded_config'], '--checkpoint', report['folded_checkpoint'],
        '--shape', '1x3x128x128', '--exporter', 'torchscript']) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert 'passed' in text and 'TorchScript exporter' in text and osp.isfile(out)
