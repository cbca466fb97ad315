"""torch.compile: the SLAB backbones compile as one graph (``fullgraph=True``) in eval and in
train mode, trained and deploy-folded form, and the compiled model computes what the eager
one computes (outputs, and in training the gradients).

CI runs dynamo with the ``aot_eager`` backend: it captures the whole graph (dynamo) and
the joint forward/backward graph (AOTAutograd), which is where graph breaks and tracing
errors show, without inductor's C++ code generation (minutes on 2 cores). The trained
form in eval runs the modules that the train-mode case already takes through AOTAutograd,
so it is captured by dynamo alone (the ``eager`` backend: graph breaks show there; a
third of the time). What inductor costs and gains is measured by
``tools/benchmark.py --compile``.

Tracing time grows with the number of blocks, so each family is one model holding every
kind of block it has: the mini SLAB-PVT with SLA in stages 1-2 and spatial-reduction
softmax attention in 3-4 (PVT-PRepBN's), and the mini SLAB-Swin with the fewest blocks
that still hold every kind Swin has (``SWIN_DEPTHS``: stage 1 a plain and a shifted SLA
block, stage 3 a plain and a shifted window-softmax block: Swin-PRepBN's).
"""
import _mini
import pytest
import torch
from _tolerance import assert_rel_close, float32_tol

from mmslab.prepbn import set_prepbn_lam

# Compiled vs eager, both float32 (AOTAutograd's decompositions sum in another order): the
# mini models' longest reduction is 512 terms (an MLP's fc2) through at most 8 blocks;
# twice as deep for gradients.
OUT_TOL = float32_tol(512, layers=8)
GRAD_TOL = float32_tol(512, layers=16)

BACKEND = 'aot_eager'
SWIN_DEPTHS = [2, 1, 2, 1]  # SLAB-Swin 'LLSS': SLA plain + shifted, softmax plain + shifted


def _build(name: str, deploy: bool, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    if 'swin' in name:
        overrides.setdefault('depths', SWIN_DEPTHS)
    model = _mini.mini_backbone(name, drop_path_rate=0.0, norm_eval=False, **overrides)
    model.init_weights()
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics before folding
        for _ in range(2):
            model(torch.randn(2, 3, 64, 96))
    model.eval()
    if deploy:
        model.switch_to_deploy()
    return model


def _compile(model: torch.nn.Module, backend: str = BACKEND) -> torch.nn.Module:
    torch._dynamo.reset()
    return torch.compile(model, backend=backend, fullgraph=True)


# one PVT with both attentions (SLA in stages 1-2, spatial-reduction softmax in 3-4), as
# SLAB-Swin has (SLA, window softmax): the time of a capture grows with the blocks traced
MIXED = [('slab_pvt', 'LLSS'), ('slab_swin', 'LLSS')]
MIXED_IDS = ['pvt_LLSS', 'slab_swin']


@pytest.mark.parametrize('deploy', [False, True], ids=['trained', 'deploy'])
@pytest.mark.parametrize('name,attn_types', MIXED, ids=MIXED_IDS)
def test_compile_fullgraph_eval(name, attn_types, deploy):
    """Eval + no_grad (inference), on a size that needs padding (not a multiple of 32)."""
    model = _build(name, deploy, attn_types=attn_types)
    x = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        ref = model(x)
        out = _compile(model, BACKEND if deploy else 'eager')(x)
    assert len(out) == len(ref) == 4
    for a, b in zip(out, ref):
        assert_rel_close(a, b, OUT_TOL)


@pytest.mark.parametrize('name,attn_types', MIXED, ids=MIXED_IDS)
def test_compile_fullgraph_train(name, attn_types):
    """Train mode mid-schedule (lam = 0.5: LayerNorm and RepBN both run, batch statistics):
    compiled forward and backward equal eager."""
    model = _build(name, deploy=False, attn_types=attn_types)
    model.train()
    assert set_prepbn_lam(model, 0.5) > 0
    x = torch.randn(2, 3, 64, 80)

    def step(m):
        m.zero_grad(set_to_none=True)
        outs = m(x)
        sum(o.float().mean() for o in outs).backward()
        return [o.detach() for o in outs], {n: p.grad.clone() for n, p in
                                            model.named_parameters() if p.grad is not None}

    ref, ref_grads = step(model)
    out, grads = step(_compile(model))
    for a, b in zip(out, ref):
        assert_rel_close(a, b, OUT_TOL)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for k in grads:
        assert_rel_close(grads[k], ref_grads[k], GRAD_TOL, msg=k)


@pytest.mark.parametrize('name', ['slab_pvt', 'slab_swin'])
def test_compile_dynamic_no_recompiles_after_two_sizes(name):
    """torch.compile(dynamic=True) of the folded backbone at changing sizes and batches
    (odd sizes, Swin maps of one window and of several): one compile for all batches >= 2
    and no recompile after the first two sizes (dynamo's frame counter, CompileCounter).
    (A batch of 1 is specialised by torch's 0/1 rule: one more compile, not run here.)
    The compiled model equals the eager one at every size."""
    from torch._dynamo.testing import CompileCounter
    model = _build(name, deploy=True)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    # odd sizes whose smallest map is >= 2x2 (a 1-token map is specialised, as torch.export
    # declares: mmslab.onnx_exporters); Swin's first map is one window tall at 75 and 67 px,
    # several at 161 and 255
    sizes = [(2, 3, 96, 128), (2, 3, 75, 97), (3, 3, 255, 129), (2, 3, 67, 233)]
    counts = []
    with torch.no_grad():
        for shape in sizes:
            x = torch.randn(*shape)
            for a, b in zip(compiled(x), model(x)):
                assert_rel_close(a, b, OUT_TOL)
            counts.append(counter.frame_count)
    assert counts == [1] * 4, counts
