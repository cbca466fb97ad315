"""The CPU inference path: its switch is scoped to the thread (a context variable), and
every attention's ``mix_inference`` (the path's form) computes its ``mix``."""
import threading

import pytest
import torch
import torch.nn as nn

from mmslab.models import (SimplifiedLinearAttention, SpatialReductionAttention, TokenMixer,
                           WindowAttention, cpu_inference)


def test_enabled_is_scoped_to_the_thread():
    """One thread's ``with enabled(False)`` does not switch the path off in another."""
    module = nn.Identity().eval()
    x = torch.zeros(1, 4, 8)
    inside, release = threading.Event(), threading.Event()
    seen = {}

    def worker() -> None:
        with cpu_inference.enabled(False), torch.no_grad():
            seen['worker inside'] = cpu_inference.applies(x, module)
            inside.set()
            release.wait(30)

    with cpu_inference.enabled(True), torch.no_grad():
        thread = threading.Thread(target=worker)
        thread.start()
        assert inside.wait(30)
        seen['main while the worker is inside'] = cpu_inference.applies(x, module)
        release.set()
        thread.join(30)
        seen['main after'] = cpu_inference.applies(x, module)
    assert seen == {'worker inside': False, 'main while the worker is inside': True,
                    'main after': True}


def test_a_new_thread_starts_from_the_default():
    default = cpu_inference.is_enabled()
    seen = []
    with cpu_inference.enabled(not default):
        thread = threading.Thread(target=lambda: seen.append(cpu_inference.is_enabled()))
        thread.start()
        thread.join(30)
        assert cpu_inference.is_enabled() is (not default)
    assert seen == [default] and cpu_inference.is_enabled() is default


def test_enabled_takes_a_bool():
    with pytest.raises(TypeError, match=r'cpu_inference.enabled: flag must be True or False, '
                       r'got 0 \(int\)'):
        with cpu_inference.enabled(0):
            pass


def _randomised(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.double().eval()


# (attention, its input tokens (B, N, C) -> what mix takes, grid, mask)
CASES = {
    'SLA qkv': (lambda: SimplifiedLinearAttention(16, 2, (4, 6)), (4, 6), None),
    'SLA q_kv': (lambda: SimplifiedLinearAttention(16, 2, (4, 6), 'q_kv'), (5, 7), None),
    'window': (lambda: WindowAttention(16, 2, 4), (4, 4), None),
    'window shifted': (lambda: WindowAttention(16, 2, 4), (4, 4), 'mask'),
    'SRA': (lambda: SpatialReductionAttention(16, 2, 2), (4, 6), None),
    'SRA no reduction': (lambda: SpatialReductionAttention(16, 2, 1), (4, 6), None),
}


@pytest.mark.parametrize('case', list(CASES))
def test_one_interface_for_every_attention(case):
    """forward = proj_drop(proj(mix(project(x), hw, mask))); mix_inference = mix."""
    make, hw, mask = CASES[case]
    attn = _randomised(make())
    assert isinstance(attn, TokenMixer)
    batch = 3
    x = torch.randn(batch, hw[0] * hw[1], 16, dtype=torch.float64)
    if mask == 'mask':  # 3 windows per image, one mask per window of every image, as a
        # stage hands them over
        mask = torch.where(torch.rand(3, 16, 16) < 0.3, -100.0, 0.0).double().repeat(batch, 1, 1)
        x = torch.randn(batch * 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        qkv = attn.project(x)
        ref = attn.mix(qkv, hw, mask)
        out = attn.mix_inference(qkv.clone(), hw, mask)
        full = attn(x, hw, mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(full, attn.proj(ref), rtol=1e-12, atol=1e-12)
    pad = attn.pad_qkv()
    zero = attn.project(torch.zeros(1, 16, dtype=torch.float64))[0]
    torch.testing.assert_close(zero, torch.zeros_like(zero) if pad is None else pad)


@pytest.mark.parametrize('case', ['SLA qkv', 'SLA q_kv', 'window', 'SRA', 'SRA no reduction'])
def test_fold_input_affine_is_exact(case):
    make, hw, _ = CASES[case]
    attn = _randomised(make())
    x = torch.randn(2, hw[0] * hw[1], 16, dtype=torch.float64)
    scale = torch.rand(16, dtype=torch.float64) + 0.5
    shift = torch.randn(16, dtype=torch.float64)
    with torch.no_grad():
        ref = attn(scale * x + shift, hw)
        attn.fold_input_affine(scale, shift)
        out = attn(x, hw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('deploy', [False, True], ids=['trained', 'deploy'])
def test_chunked_windows_and_tokens_equal_the_reference(monkeypatch, deploy):
    """The CPU path's chunks (SLA windows and MLP tokens, ``MLP_CHUNK`` elements each) made
    small enough that every stage runs several, on a padded, shifted mini SLAB-Swin in
    float64 and a batch of 2: the reference form's outputs."""
    import _mini

    from mmslab.models import cpu_inference
    torch.manual_seed(0)
    model = _mini.mini_backbone('slab_swin', window_sizes=(4, 4, 2, 2)).double()
    model.init_weights()
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 96, dtype=torch.float64))  # BatchNorm statistics
    model.eval()
    if deploy:
        model.switch_to_deploy()
    x = torch.randn(2, 3, 75, 61, dtype=torch.float64)
    monkeypatch.setattr(cpu_inference, 'MLP_CHUNK', 3 * 16 * 16 * 2)  # 2 stage-1 windows
    with torch.no_grad():
        with cpu_inference.enabled(False):
            ref = model(x)
        out = model(x)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
