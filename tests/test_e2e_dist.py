"""End to end (slow, CI): SLAB backbones under distributed training.

mmengine's ``sync_bn='torch'`` conversion of every RepBN (state dict and function
unchanged, revert and fold still work), and 2 processes (torch.distributed.run + mmdet's
tools/train.py --launcher pytorch, gloo on CPU) training the mini detector.
"""
import os
import os.path as osp
import sys

import pytest
import torch
from _e2e import (IMAGE_SIZE, NUM_TRAIN, PVT_MINI, SWIN_MINI, TESTS, codebase_script,
                  free_port, load_ckpt, run, write_config)
from _tolerance import assert_rel_close, float32_tol


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

    from mmslab.models import reparameterize
    from mmslab.prepbn import RepBN

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
        # the fold in float32 (exact in float64: tests/test_reparameterize.py): rounding
        # through the mini model, SLA sums over up to 32 x 32 tokens
        for a, b in zip(reverted(x), ref):
            assert_rel_close(a, b, float32_tol(1024, layers=8))


@pytest.mark.slow
def test_distributed_two_process_training(e2e_dir, det_pvt_cfg):
    """2 processes (torch.distributed.run + mmdet's tools/train.py --launcher pytorch,
    gloo on CPU) train the mini detector with the PRepBN setting of every full config
    (PRepBNHook r0=0: pure RepBN, per-process BatchNorm); both ranks end with identical
    parameters after seeing different images."""
    from mmengine.config import Config

    train_script = codebase_script('mmdet', 'train')
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
