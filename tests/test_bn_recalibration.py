"""BN statistics recalibration: ``recalibrate_bn``, ``recalibrate_checkpoint`` and the CLI."""
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from mmengine.runner import save_checkpoint
from torch.utils.data import DataLoader, default_collate
from _tolerance import assert_rel_close, float32_tol
from _toy import ToyModel, ToyTokens

import mmslab  # noqa: F401
from mmslab.prepbn.recalibration import recalibrate_bn, recalibrate_checkpoint
from mmslab.prepbn import RepBN


STATS = ('running_mean', 'running_var', 'num_batches_tracked')
# BatchNorm's float32 statistics (20 rows a batch, mean then variance) vs float64 ones
STATS_TOL = float32_tol(20, layers=2)


def trained_toy(seed: int = 1) -> ToyModel:
    """A toy model with non-trivial weights and stale BN statistics, in train mode."""
    torch.manual_seed(seed)
    model = ToyModel(dropout=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for m in model.modules():
            if isinstance(m, RepBN):
                m.bn.running_mean.fill_(-7.0)
                m.bn.running_var.fill_(11.0)
                m.bn.num_batches_tracked.fill_(1234)
    return model.train()


def loader(length: int = 16, batch_size: int = 4) -> DataLoader:
    return DataLoader(ToyTokens(length=length), batch_size=batch_size, shuffle=False,
                      collate_fn=default_collate)


def repbn_train(m: RepBN, x: torch.Tensor) -> torch.Tensor:
    """RepBN with batch statistics (what it computes while its BN is in train mode)."""
    rows = x.reshape(-1, x.shape[-1])
    y = F.batch_norm(rows, None, None, m.bn.weight, m.bn.bias, True, 0.0, m.bn.eps)
    return y.view_as(x) + m.alpha * x


def expected_stats(model: ToyModel, batches: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Cumulative average of the per-batch mean / unbiased variance of both BN inputs."""
    stats: Dict[str, list] = {'norm0': [], 'norm1': []}
    with torch.no_grad():
        for x in batches:
            h = F.relu(model.fc(repbn_train(model.norm0.norm2, x)))  # dropout off
            for name, t in (('norm0', x), ('norm1', h)):
                rows = t.reshape(-1, t.shape[-1]).double()
                stats[name].append((rows.mean(0), rows.var(0, unbiased=True)))
    out = {}
    for name, s in stats.items():
        out[f'{name}.norm2.bn.running_mean'] = torch.stack([m for m, _ in s]).mean(0)
        out[f'{name}.norm2.bn.running_var'] = torch.stack([v for _, v in s]).mean(0)
    return out


def test_recalibrate_bn_statistics() -> None:
    model = trained_toy()
    model.fc.eval()  # a mixed set of training flags, to be restored as it was
    flags = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [b['inputs'] for b in loader()][:3]

    assert recalibrate_bn(model, loader(), 3) == 2  # 4 batches available, 3 used

    after = model.state_dict()
    want = expected_stats(model, batches)
    for key, value in after.items():
        if key.endswith(STATS):
            continue
        assert torch.equal(value, before[key]), f'{key} changed'
    for key, value in want.items():
        assert not torch.allclose(after[key], before[key])
        assert_rel_close(after[key], value, STATS_TOL, msg=key)
    assert after['norm0.norm2.bn.num_batches_tracked'] == 3
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {m.bn.momentum for m in model.modules() if isinstance(m, RepBN)} == {0.1}


def test_recalibrate_bn_errors_leave_the_model_unchanged() -> None:
    with pytest.raises(ValueError, match='no RepBN'):
        recalibrate_bn(ToyModel(prepbn=False), loader(), 2)
    model = trained_toy()
    with pytest.raises(ValueError, match='positive'):
        recalibrate_bn(model, loader(), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='yielded no batch'):
        recalibrate_bn(model, loader(length=0), 1)
    # a one-shot iterator cannot be iterated again: 4 batches, then none
    with pytest.raises(ValueError, match=r'only 4 batches and none when iterated again '
                       r'\(5 were requested\).*not a one-shot iterator'):
        recalibrate_bn(model, iter(loader()), 5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(m.training for m in model.modules())
    assert {m.bn.momentum for m in model.modules() if isinstance(m, RepBN)} == {0.1}


class EpochSampler(torch.utils.data.Sampler):
    """A sampler whose order depends on its epoch (like DefaultSampler with shuffle)."""

    def __init__(self, length: int, epoch: int = 0) -> None:
        self.length, self.epoch, self.calls = length, epoch, []

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)
        self.epoch = epoch

    def order(self, epoch: int) -> List[int]:
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(epoch)).tolist()

    def __iter__(self):
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.length


@pytest.mark.parametrize('where', ['sampler', 'batch_sampler'])
def test_recalibrate_bn_cycles_the_loader(where: str) -> None:
    """More batches than one pass holds: the loader is iterated again, each new pass with
    the sampler's next epoch (a new order); the statistics are the cumulative average over
    exactly ``num_iters`` batches, and the sampler's epoch is restored."""
    data = ToyTokens(length=8)  # 2 batches of 4 per pass
    sampler = EpochSampler(len(data), epoch=3)
    if where == 'sampler':
        dl = DataLoader(data, batch_size=4, sampler=sampler, collate_fn=default_collate)
    else:
        dl = DataLoader(data, batch_sampler=torch.utils.data.BatchSampler(sampler, 4, False),
                        collate_fn=default_collate)
    # batches of the passes at epochs 3, 4, 5 (the 5th batch ends the run mid-pass)
    order = sampler.order(3) + sampler.order(4) + sampler.order(5)[:4]
    batches = [torch.stack([data[i]['inputs'] for i in order[j:j + 4]]) for j in range(0, 20, 4)]
    model = trained_toy()

    assert recalibrate_bn(model, dl, 5) == 2

    assert sampler.calls == [4, 5, 3] and sampler.epoch == 3
    state = model.state_dict()
    for key, value in expected_stats(model, batches).items():
        assert_rel_close(state[key], value, STATS_TOL, msg=key)
    assert state['norm0.norm2.bn.num_batches_tracked'] == 5


def test_recalibrate_bn_cycles_a_plain_list() -> None:
    """A re-iterable without a sampler (a list of batches) is cycled as it is."""
    batches = list(loader(length=8))  # 2 batches
    model = trained_toy()
    recalibrate_bn(model, batches, 3)
    state = model.state_dict()
    want = expected_stats(model, [b['inputs'] for b in batches + batches[:1]])
    for key, value in want.items():
        assert_rel_close(state[key], value, STATS_TOL, msg=key)


CONFIG = """
custom_imports = dict(imports=['mmslab', '_toy'], allow_failed_imports=False)
model = dict(type='MMSlabToyModel', dropout=0.5)
train_dataloader = dict(
    batch_size=4, num_workers=0,
    dataset=dict(type='MMSlabToyTokens', length=16),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))
train_cfg = dict(by_epoch=False, max_iters=100)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
work_dir = {work_dir!r}
"""


@pytest.fixture
def config_and_checkpoint(tmp_path: Path):
    config = tmp_path / 'toy_cfg.py'
    config.write_text(CONFIG.format(work_dir=str(tmp_path / 'work')))
    model = trained_toy()
    ckpt = tmp_path / 'iter_100.pth'
    save_checkpoint(dict(meta=dict(iter=100, dataset_meta=dict(classes=('toy', ))),
                         state_dict=model.state_dict(), optimizer=dict(junk=1)), str(ckpt))
    return config, ckpt, model


def test_recalibrate_checkpoint(config_and_checkpoint) -> None:
    config, ckpt, model = config_and_checkpoint
    raw = ckpt.read_bytes()
    with pytest.raises(ValueError, match='refusing to overwrite'):
        recalibrate_checkpoint(str(config), str(ckpt), 3, out=str(ckpt))

    out = recalibrate_checkpoint(str(config), str(ckpt), 3)

    assert out == str(ckpt.with_name('iter_100_bnrecal.pth'))
    assert ckpt.read_bytes() == raw
    saved = torch.load(out, map_location='cpu', weights_only=False)
    assert set(saved) == {'meta', 'state_dict'}
    assert saved['meta']['iter'] == 100
    assert saved['meta']['dataset_meta'] == dict(classes=('toy', ))
    assert saved['meta']['bn_recalibration']['iters'] == 3
    recalibrate_bn(model, loader(), 3)  # the same thing in-process
    state = model.state_dict()
    assert saved['state_dict'].keys() == state.keys()
    for key, value in saved['state_dict'].items():
        assert torch.equal(value, state[key]), key


def test_cli(config_and_checkpoint, tmp_path: Path, load_tool, capsys) -> None:
    """tools/recalibrate_bn.py's main() in this process (its command line runs as a
    subprocess in the PRepBN study's end-to-end test, tests/test_prepbn_study.py)."""
    config, ckpt, model = config_and_checkpoint
    out = tmp_path / 'recal.pth'
    capsys.readouterr()
    load_tool('recalibrate_bn').main([str(config), str(ckpt), '--iters', '2', '--out', str(out),
                                      '--cfg-options', 'train_dataloader.batch_size=8'])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    saved = torch.load(out, map_location='cpu', weights_only=False)
    recalibrate_bn(model, loader(batch_size=8), 2)
    for key, value in model.state_dict().items():
        assert torch.equal(saved['state_dict'][key], value), key


def test_recalibrate_checkpoint_more_batches_than_an_epoch(config_and_checkpoint,
                                                          tmp_path: Path) -> None:
    """The config's train_dataloader (DefaultSampler, 4 batches an epoch) cycles: 6
    batches give the statistics of the same 6 batches in-process."""
    config, ckpt, model = config_and_checkpoint
    out = recalibrate_checkpoint(str(config), str(ckpt), 6, out=str(tmp_path / 'recal6.pth'))
    saved = torch.load(out, map_location='cpu', weights_only=False)
    assert saved['meta']['bn_recalibration']['iters'] == 6
    recalibrate_bn(model, loader(), 6)
    for key, value in model.state_dict().items():
        assert torch.equal(saved['state_dict'][key], value), key
    assert saved['state_dict']['norm0.norm2.bn.num_batches_tracked'] == 6
