"""Kill and resume (slow, CI): a ``mim train`` run with the PRepBN schedule, killed with
SIGKILL mid-way and resumed with ``--resume``, ends exactly where an uninterrupted run
ends: the same weights (PRepBN's ``lam`` buffers included), optimizer state and the same
lam / loss trajectory in the logs.

Nothing is mocked: ``mim train mmdet`` subprocesses (mmdet's ``tools/train.py``, an
mmengine Runner), the real :class:`PRepBNHook`, ``CheckpointHook`` files, mmengine's
auto-resume from ``last_checkpoint``. The model is ``tests/_toy.py``'s tiny PRepBN
network so that the whole test takes seconds of training (its time is the three
interpreter start-ups).
"""
import glob
import json
import os
import os.path as osp
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, 'tests')
MAX_ITERS = 80
CKPT_INTERVAL = 10
KILL_AFTER = 25  # kill once the log shows at least this iteration (a few checkpoints in)
TIMEOUT = 300

CONFIG = f'''
custom_imports = dict(imports=['mmslab', '_toy'], allow_failed_imports=False)
model = dict(type='MMSlabToyModel', channels=8)
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(type='MMSlabToyTokens', length=16, channels=8),
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        collate_fn=dict(type='default_collate'))
train_cfg = dict(by_epoch=False, max_iters={MAX_ITERS}, val_interval=10**9)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50)]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval={CKPT_INTERVAL}, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=0.8)]
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
'''


def _env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (TESTS, env.get('PYTHONPATH')) if p)
    env['PYTHONUNBUFFERED'] = '1'
    env['OMP_NUM_THREADS'] = '1'  # the same reductions in every run
    return env


def _train_cmd(config: str, work_dir: str, *extra: str) -> list:
    return [sys.executable, '-m', 'mim', 'train', 'mmdet', config, '--work-dir', work_dir,
            *extra]


def train(config: str, work_dir: str, log: str, *extra: str) -> None:
    with open(log, 'w') as f:
        proc = subprocess.run(_train_cmd(config, work_dir, *extra), cwd=ROOT, env=_env(),
                              stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    with open(log) as f:
        out = f.read()
    assert proc.returncode == 0, f'training failed ({proc.returncode}):\n{out[-4000:]}'


def train_and_kill(config: str, work_dir: str, log: str) -> int:
    """Start a run in its own process group, SIGKILL the whole group (mim and the
    training process) at a random moment after iteration ``KILL_AFTER`` was logged;
    return the last iteration the log showed."""
    proc = subprocess.Popen(_train_cmd(config, work_dir), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = 0
    deadline = time.time() + TIMEOUT
    with open(log, 'w') as f:
        try:
            for line in proc.stdout:
                f.write(line)
                m = re.search(r'Iter\(train\) \[\s*(\d+)/', line)
                if m:
                    seen = int(m.group(1))
                if seen >= KILL_AFTER or time.time() > deadline:
                    time.sleep(random.uniform(0, 0.02))  # anywhere in an iteration
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
        finally:
            proc.stdout.close()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f'the run ended by itself ({proc.returncode})'
    return seen


def json_runs(work_dir: str) -> list:
    """The training records (one per logged iteration) of each run in ``work_dir``, one
    list per run in run order; a line cut by the kill is skipped."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', '*.json'))):
        if osp.basename(path) == 'scalars.json':
            continue
        records = []
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if 'prepbn_lam' in r:
                    records.append(r)
        runs.append(records)
    return runs


def load(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_run(tmp_path):
    config = str(tmp_path / 'toy_prepbn.py')
    with open(config, 'w') as f:
        f.write(CONFIG)

    # 1. uninterrupted
    ref_dir = str(tmp_path / 'uninterrupted')
    train(config, ref_dir, str(tmp_path / 'uninterrupted.log'))
    (ref_records,) = json_runs(ref_dir)
    ref_log = {r['iter']: r for r in ref_records}
    assert sorted(ref_log) == list(range(1, MAX_ITERS + 1))
    lams = [ref_log[i]['prepbn_lam'] for i in range(1, MAX_ITERS + 1)]
    assert lams[0] == 1.0 and lams[-1] == 0.0 and lams == sorted(lams, reverse=True)

    # 2. killed mid-way: the last checkpoint is an earlier iteration
    work_dir = str(tmp_path / 'killed')
    seen = train_and_kill(config, work_dir, str(tmp_path / 'killed.log'))
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        last = f.read().strip()
    resumed_from = int(re.search(r'iter_(\d+)\.pth$', last).group(1))
    assert KILL_AFTER - CKPT_INTERVAL <= resumed_from < MAX_ITERS, (seen, last)
    assert not osp.exists(osp.join(work_dir, f'iter_{MAX_ITERS}.pth'))
    (killed_records,) = json_runs(work_dir)
    before_kill = {r['iter']: r for r in killed_records}
    assert max(before_kill) >= KILL_AFTER

    # 3. `--resume`: mmengine resumes from last_checkpoint, in the same work_dir
    train(config, work_dir, str(tmp_path / 'resumed.log'), '--resume')
    with open(tmp_path / 'resumed.log') as f:
        out = f.read()
    assert f'resumed epoch: 0, iter: {resumed_from}' in out
    runs = json_runs(work_dir)
    assert len(runs) == 2  # the killed run's log is kept, the resumed run has its own
    after = runs[1]  # only the iterations after the checkpoint ran again
    assert [r['iter'] for r in after] == list(range(resumed_from + 1, MAX_ITERS + 1))

    # the lam (and loss) trajectory of killed + resumed = the uninterrupted one, exactly
    trajectory = {i: before_kill[i] for i in range(1, resumed_from + 1)}
    trajectory.update({r['iter']: r for r in after})
    for key in ('prepbn_lam', 'loss', 'lr'):
        assert [trajectory[i][key] for i in range(1, MAX_ITERS + 1)] == \
            [ref_log[i][key] for i in range(1, MAX_ITERS + 1)], key
    # the iterations the kill threw away were redone identically
    for i in range(resumed_from + 1, max(before_kill) + 1):
        if i in before_kill:
            assert before_kill[i]['prepbn_lam'] == trajectory[i]['prepbn_lam']

    # the same final weights (lam buffers included) and optimizer state, bit for bit
    ref = load(osp.join(ref_dir, f'iter_{MAX_ITERS}.pth'))
    got = load(osp.join(work_dir, f'iter_{MAX_ITERS}.pth'))
    assert ref['meta']['iter'] == got['meta']['iter'] == MAX_ITERS
    assert list(ref['state_dict']) == list(got['state_dict'])
    assert any(k.endswith('.lam') for k in got['state_dict'])
    for k, v in ref['state_dict'].items():
        assert torch.equal(v, got['state_dict'][k]), k
    assert float(got['state_dict']['norm0.lam']) == 0.0
    ref_opt, got_opt = ref['optimizer']['state'], got['optimizer']['state']
    assert ref_opt.keys() == got_opt.keys()
    for k in ref_opt:
        assert torch.equal(ref_opt[k]['momentum_buffer'], got_opt[k]['momentum_buffer'])
