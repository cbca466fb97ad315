"""ONNX export of the folded SLAB backbones, checked in ONNX Runtime (CPU) at sizes and
batches other than the export's, with both exporters (TorchScript; dynamo, where torch
supports it: the capability rule is asserted either way); the export tool (released files,
protected inputs, atomic output, --exporter); the ORT latency benchmark; mmdeploy's
custom-op library in our ORT.

Needs the ``deploy`` extra (``make test`` installs it); skipped without onnxruntime.
"""
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import onnx  # noqa: E402  (the 'deploy' extra, installed by make test)
import onnxruntime as ort  # noqa: E402

from _fold_terms import randomize_repbn  # noqa: E402
from _tolerance import assert_rel_close, float32_tol  # noqa: E402

from mmslab.models import SLABPVT, SLABSwin  # noqa: E402
from mmslab.onnx_export import export_backbone  # noqa: E402
from mmslab.onnx_exporters import default_exporter, dynamo_unsupported_reason  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

MINIS = {
    'pvt_LLLL': (SLABPVT, dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1])),
    'pvt_SSSS': (SLABPVT, dict(embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1],
                               attn_types='SSSS')),
    'swin_LLSS': (SLABSwin, dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])),
    # small windows: every stage padded, shifted and masked at these sizes
    'swin_LSLS_small_windows': (SLABSwin, dict(embed_dims=16, depths=[2, 2, 2, 2],
                                               num_heads=[1, 2, 4, 8], attn_types='LSLS',
                                               window_sizes=(8, 5, 4, 3))),
}
EXPORT_SHAPE = (1, 3, 96, 128)
# none is the export shape; odd sizes (not multiples of patch / window), batch 1 and 2
CHECK_SHAPES = [(1, 3, 67, 93), (2, 3, 128, 75), (1, 3, 161, 97), (2, 3, 33, 250)]


def random_model(cls, kw, seed=0):
    """The from-scratch init (well conditioned in float32: the check measures the export,
    not float32 noise of saturated softmaxes) with random biases, position tables, SLA
    positional encodings, RepBN affines, statistics and alphas (every fold term matters)."""
    torch.manual_seed(seed)
    model = cls(**kw)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith('weight'):  # norm scales
                p.normal_(1.0, 0.1)
            elif p.dim() == 1 or name.endswith(('pos_embed', 'positional_encoding')):
                p.normal_(0.0, 0.1)
    return randomize_repbn(model).eval()


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith('.tmp')]


@pytest.mark.parametrize('name', list(MINIS))
def test_folded_backbone_onnx_matches_torch_at_other_sizes(name, tmp_path):
    """The TorchScript exporter (dynamic_axes, opset 17)."""
    cls, kw = MINIS[name]
    model = random_model(cls, kw)
    unfolded = random_model(cls, kw)
    out = str(tmp_path / f'{name}.onnx')
    report = export_backbone(model, out, EXPORT_SHAPE, CHECK_SHAPES, threads=1,
                             exporter='torchscript')
    assert report.folded_now and model.deploy and report.exporter == 'torchscript'
    assert report.passed and report.max_rel_error <= 1e-4, report.table()
    assert [c.shape for c in report.checks] == CHECK_SHAPES
    # the file: opset 17, dynamic batch / height / width, one output per stage
    m = onnx.load(out)
    assert {o.domain: o.version for o in m.opset_import}[''] == 17
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert [o.name for o in m.graph.output] == ['out0', 'out1', 'out2', 'out3']
    assert not leftovers(tmp_path)
    # the folded graph computes the *unfolded* model too (the fold is exact)
    sess = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        ref = unfolded(x)
    for r, o in zip(ref, sess.run(None, {'input': x.numpy()})):
        assert o.shape == tuple(r.shape)
        assert np.abs(o - r.numpy()).max() / r.abs().max().item() <= 1e-4


# The dynamo exporter on the smallest models that still hold every case: SLA and window
# softmax stages, shifted windows with the shift mask, padding, patch merging, PVT's
# position-table resize. torch.export traces on a batch-2 example and declares the graph
# for H, W >= the size whose smallest map is 2x2 (33 for these Swins, 64 for a 4-stage PVT).
DYNAMO_MINIS = {
    'pvt_LS': (SLABPVT, dict(embed_dims=[16, 32], num_heads=[1, 2], mlp_ratios=[2, 2],
                             depths=[1, 1], attn_types='LS', sr_ratios=[1, 2],
                             out_indices=(0, 1))),
    'swin_LS_small_windows': (SLABSwin, dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2],
                                             attn_types='LS', window_sizes=(8, 3),
                                             mlp_ratio=2.0, out_indices=(0, 1))),
}
# none is the export shape (2x3x96x128 after the batch-2 expansion); odd sizes, batch 1, 2
# and 3; 27x45 has a first map (7x12 tokens) less tall than the 8-token first window
DYNAMO_CHECK_SHAPES = [(1, 3, 67, 93), (2, 3, 161, 97), (3, 3, 27, 45), (1, 3, 255, 129)]


def test_exporter_capability_rule():
    """The default exporter follows from capabilities: dynamo iff torch.onnx.export has a
    `dynamo` argument, torch.export.Dim exists, onnxscript imports and the symbolic-size
    probe exports and converts (torch 2.5.1 has the first three, not the last); asking
    for dynamo where it cannot run says why and what is accepted."""
    import inspect

    from mmslab.onnx_exporters import _probe_error, resolve_exporter, resolve_opset
    has_arg = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    has_dim = hasattr(torch.export, 'Dim')
    has_onnxscript = importlib.util.find_spec('onnxscript') is not None
    basics = has_arg and has_dim and has_onnxscript
    supported = basics and _probe_error() is None
    reason = dynamo_unsupported_reason()
    assert (reason is None) == supported, reason
    assert default_exporter() == ('dynamo' if supported else 'torchscript')
    if basics and not supported:
        assert 'probe fails' in reason and torch.__version__ in reason, reason
    assert resolve_exporter('torchscript') == 'torchscript'
    assert resolve_opset('torchscript', None) == 17 and resolve_opset('dynamo', None) == 18
    with pytest.raises(ValueError, match="exporter must be one of"):
        resolve_exporter('onnx')
    with pytest.raises(ValueError, match='needs opset >= 18'):
        resolve_opset('dynamo', 17)
    if supported:
        assert resolve_exporter('dynamo') == 'dynamo'
    else:
        with pytest.raises(ValueError, match="not supported here: .*'torchscript'"):
            resolve_exporter('dynamo')


@pytest.mark.skipif(dynamo_unsupported_reason() is not None,
                    reason=f'dynamo exporter unsupported: {dynamo_unsupported_reason()} '
                           '(test_exporter_capability_rule asserts the rule)')
@pytest.mark.parametrize('name', list(DYNAMO_MINIS))
def test_dynamo_export_matches_torch_at_other_sizes(name, tmp_path):
    """torch.onnx.export(dynamo=True, dynamic_shapes=...): one graph for other sizes and
    batches (no size of the example frozen), folded and compared with the unfolded model."""
    cls, kw = DYNAMO_MINIS[name]
    model, unfolded = random_model(cls, kw), random_model(cls, kw)
    out = str(tmp_path / f'{name}.onnx')
    report = export_backbone(model, out, EXPORT_SHAPE, DYNAMO_CHECK_SHAPES, threads=1,
                             exporter='dynamo')
    assert report.exporter == 'dynamo' and report.opset == 18 and report.folded_now
    assert report.passed and report.max_rel_error <= 1e-4, report.table()
    assert any('range constraints' in n for n in report.notes), report.notes
    m = onnx.load(out)
    assert {o.domain: o.version for o in m.opset_import}[''] == 18
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert [o.name for o in m.graph.output] == ['out0', 'out1']
    sess = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        ref = unfolded(x)
    for r, o in zip(ref, sess.run(None, {'input': x.numpy()})):
        assert o.shape == tuple(r.shape)
        assert np.abs(o - r.numpy()).max() / r.abs().max().item() <= 1e-4


@pytest.mark.skipif(dynamo_unsupported_reason() is not None,
                    reason=f'dynamo exporter unsupported: {dynamo_unsupported_reason()}')
@pytest.mark.parametrize('deploy', [False], ids=['trained'])  # folded: the ONNX test above
@pytest.mark.parametrize('name', list(DYNAMO_MINIS))
def test_torch_export_is_symbolic_in_batch_height_width(name, deploy):
    """torch.export.export with Dim batch / height / width: no constraint violation (a
    frozen size would raise), the declared ranges are the whole model's (batch >= 1, sides
    >= the size whose smallest map is 2x2 -- SLAB-PVT's spatial-reduction map included --
    and no upper bound), and the exported program equals the module at other sizes, for
    the trained (eval) and the folded form."""
    from mmslab.onnx_exporters import exported_program, min_export_size
    cls, kw = DYNAMO_MINIS[name]
    model = random_model(cls, kw)
    if deploy:
        model.switch_to_deploy()
    with torch.no_grad():
        ep, notes = exported_program(model, torch.randn(2, 3, 96, 128))
    ranges = sorted((int(r.lower), str(r.upper)) for r in ep.range_constraints.values())
    assert len(ranges) == 3 and ranges[0] == (1, 'int_oo'), ranges
    assert ranges[1] == ranges[2] and min_export_size(model) <= ranges[1][0] <= 32, ranges
    assert ranges[1][1] == 'int_oo', ranges
    mod = ep.module()
    for shape in DYNAMO_CHECK_SHAPES[:2]:
        x = torch.randn(*shape)
        with torch.no_grad():
            for a, b in zip(mod(x), model(x)):
                assert_rel_close(a, b, float32_tol(256, layers=4))


def test_export_refuses_its_inputs_and_writes_nothing_on_failure(tmp_path):
    cls, kw = MINIS['pvt_LLLL']
    ckpt = tmp_path / 'backbone.pth'
    ckpt.write_bytes(b'weights')
    link = tmp_path / 'link.onnx'
    link.symlink_to(ckpt)
    for out in (ckpt, link):
        with pytest.raises(ValueError, match='refusing to overwrite the input checkpoint'):
            export_backbone(random_model(cls, kw), str(out), EXPORT_SHAPE, CHECK_SHAPES[:1],
                            inputs={'checkpoint': str(ckpt)}, exporter='torchscript')
    assert ckpt.read_bytes() == b'weights'
    # a check that fails (impossible tolerance) raises before anything is written
    out = tmp_path / 'failed.onnx'
    with pytest.raises(RuntimeError, match='does not match PyTorch; not writing'):
        export_backbone(random_model(cls, kw), str(out), EXPORT_SHAPE, CHECK_SHAPES[:1],
                        rtol=1e-30, exporter='torchscript')
    assert not out.exists() and not leftovers(tmp_path)
    # an existing file is replaced whole
    out.write_bytes(b'old')
    export_backbone(random_model(cls, kw), str(out), EXPORT_SHAPE, CHECK_SHAPES[:1],
                    exporter='torchscript')
    assert onnx.load(str(out)).graph.node and not leftovers(tmp_path)


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('family,release', [('pvt', 'slab_pvt_tiny'), ('swin', 'slab_swin_tiny')])
def test_export_tool_released_imagenet_file(family, release, release_checkpoint, tmp_path,
                                            capsys):
    """`tools/export_onnx.py --family F --arch tiny --checkpoint <release file>`: the full-size
    SLAB-T backbone from a release-format file (synthesised from its key list)."""
    out, report = tmp_path / f'{release}.onnx', tmp_path / 'report.json'
    rc = _tool('export_onnx').main([
        str(out), '--family', family, '--arch', 'tiny', '--checkpoint',
        release_checkpoint(release), '--shape', '1x3x128x160', '--check-shapes',
        '1x3x97x131', '2x3x160x96', '1x3x67x257', '--threads', '2', '--report', str(report),
        '--exporter', 'torchscript'])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert 'passed' in text and f'wrote {out}' in text
    assert 'TorchScript exporter' in text  # the exporter is stated
    rep = json.loads(report.read_text())
    assert rep['passed'] and rep['folded_now'] and rep['max_rel_error'] <= 1e-4
    assert len(rep['checks']) == 3 and osp.getsize(out) > 10 * 2 ** 20  # full-size weights


def test_export_tool_refuses_what_its_exporter_cannot_do(tmp_path, capsys):
    """--exporter dynamo with an opset below 18, or where dynamo cannot run: a usage error
    that says why and what is accepted (nothing is loaded or written)."""
    args = [str(tmp_path / 'x.onnx'), '--family', 'pvt', '--checkpoint', 'x.pth',
            '--exporter', 'dynamo']
    with pytest.raises(SystemExit):
        _tool('export_onnx').main(args + ['--opset', '17'])
    err = capsys.readouterr().err
    assert ('needs --opset >= 18' in err if dynamo_unsupported_reason() is None
            else 'accepted: --exporter torchscript' in err), err
    assert not os.listdir(tmp_path)


def test_export_tool_refuses_shapes_equal_to_export(tmp_path):
    with pytest.raises(SystemExit):
        _tool('export_onnx').main([str(tmp_path / 'x.onnx'), '--family', 'pvt',
                                   '--checkpoint', 'x.pth', '--shape', '1x3x64x64',
                                   '--check-shapes', '64x64'])


def test_benchmark_ort_smoke(tmp_path):
    """`tools/benchmark.py --ort`: ONNX Runtime next to PyTorch, mini widths, the
    TorchScript rows of folded SLAB-Swin-T and its stock twin, mmdet's Swin-T (the other
    models go through the same code; the export tests cover the dynamo graphs)."""
    import sys
    sys.path.insert(0, osp.join(ROOT, 'tools'))  # the tool's own modules (bench/)
    from bench.models import MODELS
    models = ['slab_swin_t_deploy', 'swin_t']
    runs = [(models, ['torchscript'])]  # (the dynamo graphs: the export tests above)
    for names, exporters in runs:
        res = _tool('benchmark').main([
            '--ort', '--mini', '--models', *names, '--sizes', '64x64', '72x56', '--repeat',
            '1', '--warmup', '0', '--threads', '1', '--out-dir', str(tmp_path),
            '--exporters', *exporters])
        table = res.table()
        assert res.exporters == exporters
        for name in names:
            for exporter in exporters:
                for size in ('64x64', '72x56'):
                    assert f'| {MODELS[name]} | {exporter} | {size} |' in table
        for t in res.timings:
            assert len(t.torch_times) == 1 and len(t.ort_times) == 1, t
            assert t.rel_error <= 1e-4, t
            if t.model.startswith('slab'):  # one dynamic graph holds for every size
                assert t.graph == 'dynamic', t
        assert (tmp_path / 'ort.md').read_text().startswith('ONNX Runtime')
        assert json.loads((tmp_path / 'ort.json').read_text())['threads'] == 1


# ============================================================================ the exporter
def test_export_states_and_uses_the_torchscript_exporter(monkeypatch):
    """exporter='torchscript' passes dynamo=False where torch.onnx.export has that argument
    (torch >= 2.9 defaults to the dynamo exporter), and the label says which exporter."""
    import functools
    import inspect

    from mmslab.onnx_export import export_onnx_bytes, torchscript_export_kwargs
    from mmslab.onnx_exporters import EXPORTER_LABELS
    has_dynamo = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    assert torchscript_export_kwargs() == ({'dynamo': False} if has_dynamo else {})
    seen = []
    real = torch.onnx.export

    @functools.wraps(real)  # (the same signature, so the same choice)
    def spy(*args, **kwargs):
        seen.append(kwargs.get('dynamo', 'absent'))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, 'export', spy)
    cls, kw = MINIS['pvt_LLLL']
    export_onnx_bytes(random_model(cls, kw), EXPORT_SHAPE, exporter='torchscript')
    assert seen == [False if has_dynamo else 'absent']
    assert 'TorchScript' in EXPORTER_LABELS['torchscript']


def test_mmdeploy_conversion_defaults_to_the_torchscript_exporter(monkeypatch):
    """mmdeploy 1.3.1 calls torch.onnx.export without dynamo: inside the conversion the
    call gets dynamo=False where torch has the argument, an explicit value is kept, and
    the function is restored afterwards (also after an error)."""
    from mmslab.mmdeploy_ort import torchscript_onnx_export

    calls = []

    def new_style(model, args=(), f=None, *, opset_version=None, dynamo=True):
        calls.append(dynamo)

    def old_style(model, args, f, export_params=True, opset_version=None):
        calls.append('no dynamo argument')

    for fake, expected in ((new_style, [False, True]),
                           (old_style, ['no dynamo argument'] * 2)):
        monkeypatch.setattr(torch.onnx, 'export', fake)
        calls.clear()
        with torchscript_onnx_export():
            torch.onnx.export('model', 'args', 'f.onnx', opset_version=17)
            if fake is new_style:
                torch.onnx.export('model', 'args', 'f.onnx', dynamo=True)
            else:
                torch.onnx.export('model', 'args', 'f.onnx', True, 17)
        assert calls == expected and torch.onnx.export is fake
        with pytest.raises(RuntimeError, match='boom'):
            with torchscript_onnx_export():
                raise RuntimeError('boom')
        assert torch.onnx.export is fake


def test_mmdeploy_roi_align_helper_is_provided_where_torch_removed_it(monkeypatch):
    """mmdeploy 1.3.1's RoIAlign symbolic imports torch.onnx.symbolic_opset9._cast_Long
    (removed by torch 2.14): inside the conversion it exists (a Cast to int64), outside
    the module is as it was."""
    import importlib

    from mmslab.mmdeploy_ort import _cast_long_symbolic
    symbolic_opset9 = importlib.import_module('torch.onnx.symbolic_opset9')
    had = hasattr(symbolic_opset9, '_cast_Long')
    if had:  # as on a torch that removed it
        monkeypatch.delattr(symbolic_opset9, '_cast_Long')

    class Graph:
        def op(self, name, *inputs, **attrs):
            return name, inputs, attrs

    with _cast_long_symbolic():
        from torch.onnx.symbolic_opset9 import _cast_Long  # what mmdeploy does
        name, inputs, attrs = _cast_Long(Graph(), 'x', False)
    assert (name, inputs) == ('Cast', ('x', )) and int(attrs['to_i']) == 7  # INT64
    assert not hasattr(symbolic_opset9, '_cast_Long')


def test_mmdeploy_custom_ops_run_in_our_onnxruntime():
    """mmdeploy 1.3.1's ORT op library is built against ORT 1.15.1 (and ships that
    libonnxruntime); it must register and compute in the onnxruntime we install: the
    set-up's own check (tools/check_deploy_env.py: mmdeploy's grid_sampler in a one-node
    graph, corners exact), then its session against F.grid_sample on random inputs."""
    import runpy
    check = runpy.run_path(osp.join(ROOT, 'tools', 'check_deploy_env.py'))
    sess = check.get('sess')
    assert sess is not None, 'tools/check_deploy_env.py no longer leaves its session `sess`'
    x = torch.randn(2, 3, 9, 11)
    grid = torch.rand(2, 5, 7, 2) * 2.2 - 1.1
    y = sess.run(None, {'x': x.numpy(), 'grid': grid.numpy()})[0]
    ref = F.grid_sample(x, grid, 'bilinear', 'zeros', align_corners=True)
    assert_rel_close(torch.from_numpy(y), ref, float32_tol(4))  # 4-term bilinear sums
