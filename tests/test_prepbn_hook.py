"""PRepBNHook with real mmengine Runners on a tiny CPU model (tests/_toy.py)."""
import json
import logging
from pathlib import Path
from typing import List, Tuple, Union

import pytest
import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from _toy import ToyModel, toy_loader_cfg, toy_runner_cfg

import mmslab  # noqa: F401  (registers PRepBNHook)
from mmslab.hooks import PRepBNHook


def expected_lam(i: int, r0: float, warmup: int, decay: float) -> float:
    """The schedule of the issue, written independently of the hook."""
    if i < warmup:
        return r0
    if decay == 0:
        return 0.0
    return r0 * max(0.0, 1.0 - (i - warmup) / decay)


def per_iteration(lams: List[Tuple[float, ...]], forwards: int) -> List[float]:
    """One lam per iteration, checking all PRepBN and all forwards of it agree."""
    assert len(lams) % forwards == 0
    out = []
    for k in range(0, len(lams), forwards):
        group = {v for t in lams[k:k + forwards] for v in t}
        assert len(group) == 1, f'different lam within one iteration: {lams[k:k + forwards]}'
        out.append(group.pop())
    return out


def train(work_dir: Path, **kwargs) -> Runner:
    runner = Runner(**toy_runner_cfg(work_dir, **kwargs))
    runner.train()
    return runner


def toy(runner: Runner) -> ToyModel:
    return runner.model.module if hasattr(runner.model, 'module') else runner.model


@pytest.mark.parametrize('kwargs', [
    dict(r0=1.0, warmup_iters=0, decay_iters=12),  # ends at lam=0.25
    dict(r0=1.0, warmup_iters=3, decay_iters=0.5),
    dict(r0=0.6, warmup_iters=2, decay_iters=0),
    dict(),
])
def test_trajectory_and_log(tmp_path: Path, kwargs: dict) -> None:
    n = 10
    runner = train(tmp_path, max_iters=n, hook=dict(type='PRepBNHook', **kwargs))
    hook = PRepBNHook(**kwargs)
    decay = hook.decay_iters * n if isinstance(hook.decay_iters, float) else hook.decay_iters
    want = [expected_lam(i, hook.r0, hook.warmup_iters, decay) for i in range(n)]
    got = per_iteration(toy(runner).lams, 1)
    assert got == pytest.approx(want, abs=1e-12)
    # Logged every iteration (LoggerHook interval 1): message hub, text log, scalars.json.
    assert runner.message_hub.get_scalar('train/prepbn_lam').current() == pytest.approx(
        want[-1], abs=1e-12)
    text = Path(runner.log_dir, f'{runner.timestamp}.log').read_text()
    assert f'Iter(train) [{n}/{n}]' in text
    last_line = [ln for ln in text.splitlines() if f'Iter(train) [{n}/{n}]' in ln][0]
    assert f'prepbn_lam: {want[-1]:.4f}' in last_line
    records = [json.loads(ln) for ln in
               Path(runner.log_dir, 'vis_data', 'scalars.json').read_text().splitlines()]
    logged = {r['iter']: r['prepbn_lam'] for r in records if 'prepbn_lam' in r}
    assert logged == pytest.approx({i + 1: want[i] for i in range(n)}, abs=1e-12)


def test_finetune_one_liner_keeps_repbn(tmp_path: Path) -> None:
    runner = Runner(**toy_runner_cfg(tmp_path, max_iters=4,
                                     custom_hooks=[dict(type='PRepBNHook', r0=0.0)]))
    toy(runner).norm0.lam = 0.7  # whatever the model held before, the hook decides
    runner.train()
    assert per_iteration(toy(runner).lams, 1) == [0.0] * 4


def test_epoch_based_fraction(tmp_path: Path) -> None:
    # 16 samples / batch 4 = 4 iterations per epoch, 2 epochs: max_iters = 8, decay 4.
    runner = train(tmp_path, hook=dict(type='PRepBNHook', decay_iters=0.5),
                   train_cfg=dict(by_epoch=True, max_epochs=2),
                   train_dataloader=toy_loader_cfg(sampler='DefaultSampler'),
                   log_processor=dict(by_epoch=True))
    assert runner.max_iters == 8
    want = [expected_lam(i, 1.0, 0, 4) for i in range(8)]
    assert per_iteration(toy(runner).lams, 1) == pytest.approx(want, abs=1e-12)


def test_gradient_accumulation(tmp_path: Path) -> None:
    runner = train(tmp_path, max_iters=6, hook=dict(type='PRepBNHook', decay_iters=4),
                   optim_wrapper=dict(type='OptimWrapper', accumulative_counts=2,
                                      optimizer=dict(type='SGD', lr=0.05)))
    want = [expected_lam(i, 1.0, 0, 4) for i in range(6)]
    assert per_iteration(toy(runner).lams, 1) == pytest.approx(want, abs=1e-12)


def test_validation_and_several_forwards(tmp_path: Path) -> None:
    n = 8
    runner = train(
        tmp_path, max_iters=n, hook=dict(type='PRepBNHook', warmup_iters=1, decay_iters=5),
        model=dict(type='MMSlabToyModel', forwards_per_step=2),
        train_cfg=dict(by_epoch=False, max_iters=n, val_interval=2),
        val_dataloader=toy_loader_cfg(length=8, shuffle=False, sampler='DefaultSampler'),
        val_cfg=dict(), val_evaluator=dict(type='MMSlabToyMetric'))
    assert 'val/mse' in runner.message_hub.log_scalars  # validation really ran
    want = [expected_lam(i, 1.0, 1, 5) for i in range(n)]
    assert per_iteration(toy(runner).lams, 2) == pytest.approx(want, abs=1e-12)


class _StopAt(Hook):
    """Simulates a crash right after the iteration ``stop`` (checkpoint saved)."""

    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, stop: int) -> None:
        self.stop = stop

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.stop:
            raise RuntimeError('simulated crash')


def test_resume_is_exact(tmp_path: Path) -> None:
    n, k = 8, 3
    hook = dict(type='PRepBNHook', warmup_iters=1, decay_iters=0.75)
    full = train(tmp_path / 'full', max_iters=n, hook=hook)

    # Same config, interrupted after iteration k (checkpoint iter_3.pth), then resumed.
    cfg = toy_runner_cfg(tmp_path / 'cut', max_iters=n, hook=hook)
    cfg['default_hooks']['checkpoint']['interval'] = k
    first = Runner(**cfg)
    first.register_hook(_StopAt(k))
    with pytest.raises(RuntimeError, match='simulated crash'):
        first.train()
    ckpt = tmp_path / 'cut' / f'iter_{k}.pth'
    assert ckpt.is_file()
    resumed = train(tmp_path / 'cut', max_iters=n, hook=hook, resume=True, load_from=str(ckpt))

    lam_full = per_iteration(toy(full).lams, 1)
    lam_cut = per_iteration(toy(first).lams, 1)
    assert lam_cut == lam_full[:k]
    assert per_iteration(toy(resumed).lams, 1) == lam_full[k:]
    for (name, a), b in zip(toy(full).state_dict().items(), toy(resumed).state_dict().values()):
        assert torch.equal(a, b), name


def test_model_wrapper(tmp_path: Path) -> None:
    """A real MMDistributedDataParallel (gloo, world size 1) around the toy model."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0,
                            world_size=1)
    try:
        model = ToyModel()
        runner = Runner(**toy_runner_cfg(tmp_path, max_iters=5,
                                         hook=dict(type='PRepBNHook', decay_iters=4),
                                         model=MMDistributedDataParallel(module=model)))
        runner.train()
    finally:
        dist.destroy_process_group()
    assert isinstance(runner.model, MMDistributedDataParallel)
    want = [expected_lam(i, 1.0, 0, 4) for i in range(5)]
    assert per_iteration(model.lams, 1) == pytest.approx(want, abs=1e-12)


class _Records(logging.Handler):

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_model_without_prepbn_warns_once(tmp_path: Path) -> None:
    runner = Runner(**toy_runner_cfg(tmp_path, max_iters=6,
                                     model=dict(type='MMSlabToyModel', prepbn=False)))
    records = _Records()
    runner.logger.addHandler(records)
    try:
        runner.train()
    finally:
        runner.logger.removeHandler(records)
    assert len([m for m in records.messages if 'PRepBN' in m]) == 1
    assert 'no PRepBN' in [m for m in records.messages if 'PRepBN' in m][0]
    assert 'train/prepbn_lam' not in runner.message_hub.log_scalars
    assert len(toy(runner).lams) == 6 and set(toy(runner).lams) == {()}


def test_warns_when_decay_outlasts_the_run(tmp_path: Path) -> None:
    runner = Runner(**toy_runner_cfg(tmp_path, max_iters=4,
                                     hook=dict(type='PRepBNHook', decay_iters=8)))
    records = _Records()
    runner.logger.addHandler(records)
    try:
        runner.train()
    finally:
        runner.logger.removeHandler(records)
    assert any('ends with lam=0.625' in m for m in records.messages)


def test_registered_and_validated() -> None:
    assert HOOKS.get('PRepBNHook') is PRepBNHook
    hook = HOOKS.build(dict(type='PRepBNHook'))
    assert (hook.r0, hook.warmup_iters, hook.decay_iters) == (1.0, 0, 0.5)
    bad_value: List[dict] = [dict(r0=-0.1), dict(r0=1.5), dict(warmup_iters=-1),
                             dict(decay_iters=-5), dict(decay_iters=1.5), dict(decay_iters=0.0)]
    for kwargs in bad_value:
        with pytest.raises(ValueError, match=f'PRepBNHook: {next(iter(kwargs))} must be'):
            PRepBNHook(**kwargs)
    bad_type: List[dict] = [dict(r0='1'), dict(warmup_iters=2.0), dict(decay_iters=True),
                            dict(decay_iters='0.8')]
    for kwargs in bad_type:  # bool is not an int, a float not an iteration count
        with pytest.raises(TypeError, match=f'PRepBNHook: {next(iter(kwargs))} must be'):
            PRepBNHook(**kwargs)
    value: Union[int, float]
    for value in (0, 1, 1.0, 0.25):
        PRepBNHook(decay_iters=value)
