"""The benchmark tool (tools/benchmark.py, tools/bench/): smoke runs (mini widths, one
tiny size, one round), the targets table, MAC counting."""
import copy
import os
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))  # the tools' own modules (bench/)

from bench.cases import PRESETS, Case, make_cases  # noqa: E402
from bench.macs import count_macs  # noqa: E402
from bench.models import MODELS  # noqa: E402
from bench.report import table  # noqa: E402
from bench.result import BenchmarkResult, Measurement  # noqa: E402
from bench.run import Options, run_benchmark  # noqa: E402
from bench.targets import Target, evaluate, load_targets  # noqa: E402

from mmslab.models import SimplifiedLinearAttention  # noqa: E402


def main(argv):
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_cli',
                                                  osp.join(ROOT, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_benchmark_smoke(tmp_path):
    """Every model (the default run's and the classifiers, which only --models names)."""
    res = main(['--mini', '--sizes', '64x64', '--repeat', '1', '--warmup', '0',
                '--threads', '1', '--models', *MODELS, '--out-dir', str(tmp_path)])
    text = table(res)
    for label in MODELS.values():
        assert f'| {label} | 64x64 |' in text
    assert all(m.macs and m.macs > 0 and m.peak_bytes is not None and len(m.times) == 1
               and len(m.faults) == 1 and m.faults_per_call >= 0 for m in res.measurements)
    assert '| peak RSS growth MB | page faults |' in text
    assert 'allocator: ' in text.splitlines()[0] and ', as launched' in text
    assert '| SLAB-PVT-T classifier deploy | 64x64 | 1 | eval fp32 |' in text
    assert res.stock(res.get('slab_pvt_t_cls_deploy', res.measurements[0].case)).model == \
        'swin_t_cls'  # the classifiers' stock twin: mmpretrain's Swin-T classifier
    assert not any(res.missed_ops.values()), res.missed_ops
    report = (tmp_path / 'benchmark.md').read_text()
    assert 'Targets:' in report
    # every CPU target of the table is reported, measured or not
    assert report.count('not measured in this run') == len(
        [t for t in load_targets() if t.device == 'cpu'])
    assert os.path.getsize(tmp_path / 'latency.png') > 0
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_detr_encoder_sees_the_detectors_tokens():
    """The Deformable DETR encoder rows: for an image of the case's size the encoder gets
    the levels that the detector's backbone + neck make (800x1344: 100x168 + 50x84 + 25x42
    + 13x21 tokens; an odd size checked against the mini detector), through the detector's
    own pre_transformer; the three forms share every weight but the norms'."""
    from bench.detr import detector_config, level_shapes
    from bench.models import build_backbone
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import DefaultScope

    from mmslab.prepbn import PRepBN
    assert level_shapes(800, 1344, 4) == ((100, 168), (50, 84), (25, 42), (13, 21))
    # mmcv's MultiheadAttention shares one default dropout_layer dict, which a `dropout=`
    # argument writes into (a model built earlier in this process may have): compared below
    shared_default = copy.deepcopy(MultiheadAttention.__init__.__defaults__[2])
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = DET_MODELS.build(detector_config(True, mini=True)).eval()
    ln, prepbn, folded = (build_backbone(f'deformable_detr_encoder{s}', mini=True)
                          for s in ('', '_prepbn', '_prepbn_deploy'))
    h, w = 97, 131
    with torch.no_grad():
        feats = detector.extract_feat(torch.zeros(1, 3, h, w))
    shapes = [tuple(f.shape[-2:]) for f in feats]
    assert shapes == list(level_shapes(h, w, 4)) == [(13, 17), (7, 9), (4, 5), (2, 3)]
    inputs = prepbn.encoder_inputs(2, h, w, torch.device('cpu'))
    sizes = [a * b for a, b in shapes]
    assert inputs['spatial_shapes'].tolist() == [list(s) for s in shapes]
    assert inputs['level_start_index'].tolist() == [0, 221, 284, 304]
    assert torch.equal(inputs['valid_ratios'], torch.ones(2, 4, 2))
    assert inputs['feat'].shape == inputs['feat_pos'].shape == (2, sum(sizes), 32)
    assert inputs['feat_mask'] is None  # nothing padded: mmdet passes no mask
    assert torch.isfinite(inputs['feat_pos']).all()  # level_embed initialised
    assert sum(isinstance(m, PRepBN) for m in prepbn.modules()) == 4
    assert [m.deploy for m in folded.modules() if isinstance(m, PRepBN)] == [True] * 4
    assert not any(isinstance(m, PRepBN) for m in ln.modules())
    kept = {k: v for k, v in ln.state_dict().items() if '.norms.' not in k}
    for other in (prepbn, folded):
        theirs = other.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in kept.items())
    with torch.no_grad():
        memory, = folded(torch.zeros(1, 3, h, w))
    assert memory.shape == (1, sum(sizes), 32)
    # the decoder's `dropout=` did not leak into mmcv's shared default dropout_layer
    assert MultiheadAttention.__init__.__defaults__[2] == shared_default


def test_benchmark_train_amp_smoke(tmp_path):
    """The GPU mode's code paths on the CPU: training steps (forward + backward, train
    mode, both PRepBN branches) and eval forwards under bf16 autocast, batch 2, the
    trained forms only for training; same table / targets / plot."""
    models = ['slab_pvt_t', 'slab_pvt_t_deploy', 'pvt_t', 'swin_prepbn_t',
              'swin_prepbn_t_deploy', 'swin_t']
    res = main(['--device', 'cpu', '--mini', '--sizes', '64x64', '--batch', '2',
                '--amp', 'bf16', '--train', '--repeat', '2', '--warmup', '1', '--threads', '1',
                '--models', *models, '--out-dir', str(tmp_path)])
    assert not res.failures, res.failures
    trained = res.measurements
    assert {m.model for m in trained} == {'slab_pvt_t', 'pvt_t', 'swin_prepbn_t', 'swin_t'}
    for m in trained:
        assert m.case == Case((64, 64), 2, 'bf16', True)
        assert len(m.times) == 2 and all(t > 0 for t in m.times)
        assert m.macs and m.peak_bytes and m.gflops is None
    assert '| Swin-T-PRepBN | 64x64 | 2 | train bf16 |' in table(res)
    assert 'Targets:' in (tmp_path / 'benchmark.md').read_text()
    assert os.path.getsize(tmp_path / 'latency.png') > 0
    # the models are back in eval mode with lam = 0 after the run
    res = main(['--device', 'cpu', '--mini', '--sizes', '48x80', '--amp', 'fp32', 'bf16',
                '--repeat', '1', '--warmup', '0', '--threads', '1', '--no-memory',
                '--models', 'slab_swin_t_deploy', 'swin_t', '--out-dir', str(tmp_path)])
    assert [(m.model, m.amp) for m in res.measurements] == [
        ('slab_swin_t_deploy', 'fp32'), ('swin_t', 'fp32'),
        ('slab_swin_t_deploy', 'bf16'), ('swin_t', 'bf16')]
    assert '| SLAB-Swin-T deploy | 48x80 | 1 | eval bf16 |' in table(res)


def test_classifier_rows_call_the_classifier():
    """A classifier row: eval -> the logits; its training step (train mode, lam = 0.5) ->
    the config's head loss on random labels (label smoothing over 1000 classes: about
    ln 1000 at initialisation), backward, then the config's gradient clipping and
    optimizer (AdamW) step the weights; back in eval with lam = 0."""
    from bench.cases import make_step
    from bench.models import build_backbone, set_mode
    model = build_backbone('slab_swin_t_cls', mini=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
    set_mode(model, True)
    before = model.classifier.head.fc.weight.detach().clone()
    loss = make_step(model, x, Case((64, 64), 2, 'fp32', True))()
    assert 6.0 < loss.item() < 8.0
    assert model.optim_wrapper_cfg['clip_grad'] == dict(max_norm=5.0)
    assert type(model.optimizer()).__name__ == 'AdamW' and model.optimizer().state
    assert not torch.equal(before, model.classifier.head.fc.weight)
    set_mode(model, False)
    assert not model.training and model.classifier.backbone.norm.lam.item() == 0.0


def test_benchmark_compile_smoke(tmp_path):
    """``--compile`` times a compiled twin next to the eager model and reports the compile
    time (the aot_eager backend here: no C++ build in CI)."""
    res = main(['--mini', '--sizes', '64x64', '--repeat', '1', '--warmup', '1',
                '--threads', '1', '--models', 'slab_pvt_t_deploy', '--compile',
                '--compile-backend', 'aot_eager', '--no-flops', '--no-memory',
                '--out-dir', str(tmp_path)])
    assert not res.failures, res.failures
    eager, compiled = res.measurements
    assert (eager.model, compiled.model) == ('slab_pvt_t_deploy', 'slab_pvt_t_deploy+compile')
    assert compiled.first_call > 0 and compiled.graph_breaks == 0
    assert eager.first_call is None
    assert '| SLAB-PVT-T deploy [compiled] | 64x64 | 1 | eval fp32 |' in table(res)


def test_benchmark_failure_is_reported_and_run_goes_on():
    """A model that fails in a case (an error, CUDA out of memory) is dropped from that
    case and listed; the others are measured (a long GPU run is not lost to one model)."""
    class Fails(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError('CUDA out of memory (pretend)')
            return (x.mean(1, keepdim=True), )

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return (self.conv(x), )

    partial = []
    options = Options(models=['fails', 'conv'],
                      cases=make_cases([(16, 16)], (1, 2), ('fp32', 'bf16')),
                      repeat=2, warmup=1, threads=1, mini=True)
    res = run_benchmark(options, factories={'fails': Fails, 'conv': Conv},
                        log=lambda s: None, on_case=partial.append)
    assert [(m.model, m.batch, m.amp) for m in res.measurements] == [
        ('fails', 1, 'fp32'), ('conv', 1, 'fp32'), ('fails', 1, 'bf16'), ('conv', 1, 'bf16'),
        ('conv', 2, 'fp32'), ('conv', 2, 'bf16')]
    assert list(res.failures) == ['fails eval fp32 b2 16x16', 'fails eval bf16 b2 16x16']
    assert 'CUDA out of memory (pretend)' in res.failures['fails eval fp32 b2 16x16']
    assert 'FAILED: fails eval fp32 b2 16x16' in table(res)
    assert [len(p.measurements) for p in partial] == [2, 4, 5, 6]


@pytest.mark.parametrize('kw,words', [
    (dict(repeat=0), 'benchmark: repeat must be >= 1, got 0'),
    (dict(warmup=-1), 'benchmark: warmup must be >= 0, got -1'),
    (dict(device='tpu'), "benchmark: device must be 'cpu' or 'cuda'"),
    (dict(cases=[Case((8, 8), 1, 'fp8')]), "benchmark: amp must be one of"),
    (dict(models=[]), 'benchmark: models must name at least one model'),
])
def test_options_are_checked(kw, words):
    with pytest.raises(ValueError, match=words):
        Options(**kw)


@pytest.mark.parametrize('argv,words', [
    (['--sizes', '64xq'], 'argument --sizes: a size is HxW'),
    (['--repeat', '0'], 'argument --repeat: must be >= 1, got 0'),
    (['--out-dir', ''], 'argument --out-dir: must be a path, got an empty string'),
])
def test_cli_arguments_are_validated(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def _fake(model, case, median, peak=None):
    return Measurement(model, case.size, [median, median * 1.1], batch=case.batch,
                       amp=case.amp, train=case.train, peak_bytes=peak, weight_bytes=0)


def test_gpu_preset_and_targets():
    """``--preset gpu`` is the GPU matrix, and the CUDA targets of the table are read from
    the right cases (no GPU needed: measurements made up)."""
    cases = PRESETS['gpu']
    shapes = {(c.size, c.batch) for c in cases}
    assert shapes == {((800, 1344), 1), ((800, 1344), 2), ((512, 512), 16), ((1600, 2688), 1)}
    assert {c.mode for c in cases} == {'eval fp32', 'eval fp16', 'train fp16'}
    assert len(cases) == 12

    e16, e32, t16 = (Case((800, 1344), 2, 'fp16'), Case((800, 1344), 1, 'fp32'),
                     Case((800, 1344), 2, 'fp16', True))
    ms = [_fake('pvt_t', e16, 0.018), _fake('slab_pvt_t_deploy', e16, 0.0115),  # 0.64
          _fake('swin_t', e16, 0.0121), _fake('slab_swin_t_deploy', e16, 0.0099),  # 0.82
          _fake('swin_prepbn_t_deploy', e16, 0.0080),                              # 0.66
          _fake('pvt_t', e32, 0.010), _fake('slab_pvt_t_deploy', e32, 0.006),      # 0.6
          _fake('pvt_t', t16, 0.048, peak=100), _fake('slab_pvt_t', t16, 0.051, peak=90),
          _fake('swin_t', t16, 0.057, peak=100), _fake('slab_swin_t', t16, 0.075, peak=120)]
    res = BenchmarkResult(ms, [50000.0], 2, 7, 3, dict(torch='x', gpu='H100'), device='cuda',
                          gemm_amp={'fp16': 700000.0})
    targets = load_targets()
    lines = evaluate(res, targets)
    text = '\n'.join(lines)
    assert len(lines) == len([t for t in targets if t.device == 'cuda']) == 11

    def line(num, den, case, what='latency'):
        return next(t for t in lines if f': {num} / {den} {what} ({case},' in t)

    assert line('SLAB-PVT-T deploy', 'PVT-T (mmdet)', e16).endswith('0.639 (minima: 0.639) -> NOT met')
    assert line('SLAB-Swin-T deploy', 'Swin-T (mmdet)', e16).endswith('-> NOT met')
    assert line('Swin-T-PRepBN deploy', 'Swin-T (mmdet)', e16).endswith('0.661 (minima: 0.661) -> met')
    assert line('SLAB-PVT-T deploy', 'PVT-T (mmdet)', e32).endswith('0.600 (minima: 0.600) -> met')
    assert line('SLAB-Swin-T deploy', 'Swin-T (mmdet)', e32).endswith('not measured in this run')
    assert line('SLAB-PVT-T', 'PVT-T (mmdet)', t16).endswith('-> NOT met')  # 1.0625
    assert line('SLAB-Swin-T', 'Swin-T (mmdet)', t16).endswith('-> NOT met')  # 1.316
    assert line('SLAB-PVT-T', 'PVT-T (mmdet)', t16, 'memory').endswith('0.900 -> met')
    assert line('SLAB-Swin-T', 'Swin-T (mmdet)', t16, 'memory').endswith('1.200 -> NOT met')
    out = table(res)
    assert 'train fp16' in out and 'latency ms' in out and 'TF32' in out
    assert 'target <= 0.3)' not in text  # no CPU target on CUDA

    cpu = BenchmarkResult([_fake('pvt_t', e32, 2.46), _fake('slab_pvt_t_deploy', e32, 0.6),
                           _fake('swin_t', e32, 1.82), _fake('slab_swin_t_deploy', e32, 1.35)],
                          [80.0], 2, 3, 1, dict(torch='x'))
    lines = evaluate(cpu, targets)
    assert lines[0].endswith('0.244 (minima: 0.244) -> met')  # SLAB-PVT-T deploy <= 0.3
    assert lines[1].endswith('0.742 (minima: 0.742) -> met')  # SLAB-Swin-T deploy <= 0.8
    assert 'target <= 0.3' in lines[0] and 'target <= 0.8' in lines[1]
    # a target over two cases (the same model at 4x the pixels)
    big = Case((1600, 2688), 1, 'fp32')
    cpu.measurements += [_fake('slab_pvt_t', e32, 1.0), _fake('slab_pvt_t', big, 4.1)]
    scaling = next(t for t in evaluate(cpu, targets) if str(big) in t)
    assert f'({big} / {e32}, target <= 4.4): 4.100' in scaling and scaling.endswith('-> met')


def test_targets_file_errors(tmp_path):
    good = load_targets()
    assert all(isinstance(t, Target) for t in good) and good
    bad = tmp_path / 't.csv'
    header = 'name,device,statistic,numerator,denominator,case,denominator_case,max_ratio\n'
    for row, words in ((',tpu,latency,pvt_t,pvt_t,eval fp32 b1 8x8,,1', 'device must be'),
                       (',cpu,speed,pvt_t,pvt_t,eval fp32 b1 8x8,,1', 'statistic must be'),
                       (',cpu,latency,resnet,pvt_t,eval fp32 b1 8x8,,1', 'numerator must be'),
                       (',cpu,latency,pvt_t,pvt_t,eval fp32 8x8,,1', 'a case is'),
                       (',cpu,latency,pvt_t,pvt_t,eval fp32 b1 8x8,,x', 'max_ratio must be')):
        bad.write_text(header + row + '\n')
        with pytest.raises(ValueError, match=f'{bad}, line 2: {words}'):
            load_targets(str(bad))
    bad.write_text('name,device\n')
    with pytest.raises(ValueError, match='the header must be'):
        load_targets(str(bad))


def test_case_text_round_trip():
    for case in PRESETS['gpu']:
        assert Case.parse(str(case)) == case


def test_sla_macs_are_counted():
    """The analyzer sees every matmul of SLA: projections, k^T v, q [k^T v | k^T 1], dwc."""
    c, heads, h, w = 32, 2, 6, 8
    d, n = c // heads, h * w

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = SimplifiedLinearAttention(c, heads, (h, w))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, (h, w))

    macs, missed = count_macs(Wrap().eval(), torch.randn(1, n, c))
    expected = (n * c * 3 * c + n * c * c        # qkv, proj
                + heads * d * n * d              # k^T v
                + heads * n * d * (d + 1)        # q [k^T v | k^T 1]
                + n * c * 25)                    # depthwise 5x5
    assert macs == expected and not missed


RETAIN_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from bench import allocator
def refault():
    a = torch.empty(16 << 20)          # 64 MiB: above glibc's mmap threshold
    a.fill_(1.0)
    del a
    before = allocator.minor_faults()
    b = torch.empty(15 << 20)          # 60 MiB: fits where the freed block was
    b.fill_(2.0)
    return allocator.minor_faults() - before
default = refault()
allocator.retain_freed_memory()
print(default, refault(), allocator.describe())
"""


def test_allocator_retain_removes_the_page_faults_of_freed_memory():
    """glibc maps a 64 MiB block afresh and unmaps it on free: a 60 MiB tensor allocated
    next faults its pages in; after --allocator retain's mallopt the process reuses
    the freed block without page faults, and the report's header says so. A fresh
    interpreter: the setting holds for the rest of a process. Elsewhere than on glibc the
    option is refused with a clear error."""
    import subprocess
    from bench.allocator import glibc_version, retain_freed_memory
    if glibc_version() is None:
        with pytest.raises(RuntimeError, match='does not run on glibc'):
            retain_freed_memory()
        return
    out = subprocess.run([sys.executable, '-c', RETAIN_PROBE, osp.join(ROOT, 'tools')],
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=2)
    default, retained, describe = int(out[0]), int(out[1]), out[2]
    # 15360 faults of 4 KiB pages (a few dozen where transparent huge pages are 'always')
    assert default >= 20, default
    assert retained <= min(200, default // 20), (default, retained)
    assert 'freed memory retained (--allocator retain)' in describe
