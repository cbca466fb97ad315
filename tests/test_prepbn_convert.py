"""PRepBN in any model, LayerNorm weights in and a folded model out: the module converter,
the checkpoint key map (on load and offline), the fold of every converged norm, the
norms' deploy form, and their errors (nothing changed)."""
import copy

import pytest
import torch
import torch.nn as nn
from _stock import KINDS, run_tokens_model, tokens_input, tokens_model
from _tolerance import EXACT, assert_rel_close
from mmcv.cnn import build_norm_layer

from mmslab.models import reparameterize
from mmslab.prepbn import (PRepBN, RepBN, convert_layernorm_to_prepbn, fold_norms,
                           layernorm_keys_to_prepbn, set_prepbn_lam)


def _ln_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = tokens_model(kind, dict(type='LN', eps=1e-6)).double()
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def _state(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_stats(model: nn.Module, kind: str, steps: int = 3) -> None:
    """A few train-mode forwards: RepBN running statistics away from their init."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            run_tokens_model(kind, model, tokens_input(kind) * 2 + 0.5)
    model.eval()


@pytest.mark.parametrize('kind', KINDS)
def test_converter_equals_the_layernorm_model_and_folds_exactly(kind):
    """convert_layernorm_to_prepbn: every LayerNorm -> PRepBN with its weights, lam = 1,
    the same outputs (float64); trained, at lam = 0 the fold of every norm is exact; the
    folded state dict loads into the model built with deploy=True norms."""
    ln_model = _ln_model(kind)
    x = tokens_input(kind)
    with torch.no_grad():
        ref = run_tokens_model(kind, ln_model, x)
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in ln_model.modules())
    model, names = convert_layernorm_to_prepbn(copy.deepcopy(ln_model))
    assert len(names) == n_ln == len([m for m in model.modules() if isinstance(m, PRepBN)])
    assert not model.training  # the module's mode is kept
    with torch.no_grad():
        for a, b in zip(run_tokens_model(kind, model, x), ref):
            assert_rel_close(a, b, EXACT)
    _train_stats(model, kind)
    set_prepbn_lam(model, 0.0)
    with torch.no_grad():
        before = run_tokens_model(kind, model, x)
        assert fold_norms(model) == names
        assert all(m.deploy for m in model.modules() if isinstance(m, (PRepBN, RepBN)))
        for a, b in zip(run_tokens_model(kind, model, x), before):
            assert_rel_close(a, b, 1e-9)
    folded = tokens_model(kind, dict(type='PRepBN', eps=1e-6, deploy=True)).double()
    folded.eval()  # (mmdet's Swin.train() returns None)
    folded.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        for a, b in zip(run_tokens_model(kind, folded, x), before):
            assert_rel_close(a, b, 1e-9)


def test_converter_options_and_refusals():
    from mmdet.models.layers.transformer import DinoTransformerDecoder
    decoder = DinoTransformerDecoder(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=16, num_heads=2),
        cross_attn_cfg=dict(embed_dims=16, num_levels=1, num_points=2),
        ffn_cfg=dict(embed_dims=16, feedforward_channels=32)), post_norm_cfg=None)
    # the decoder's hard-coded nn.LayerNorm (no norm_cfg reaches it), nothing else
    decoder, names = convert_layernorm_to_prepbn(decoder, include=r'^norm$', lam=0.0)
    assert names == ['norm'] and isinstance(decoder.norm, PRepBN)
    assert float(decoder.norm.lam) == 0.0
    assert all(isinstance(m.norms[0], nn.LayerNorm) for m in decoder.layers)
    _, names = convert_layernorm_to_prepbn(decoder, exclude=r'norms\.2')
    assert names == ['layers.0.norms.0', 'layers.0.norms.1']
    with pytest.raises(ValueError, match=r'no nn.LayerNorm to convert.*converted already'):
        convert_layernorm_to_prepbn(decoder, include=r'norms\.[01]$')
    # a LayerNorm over two dims cannot be a PRepBN: nothing converted
    model = nn.Sequential(nn.LayerNorm(4), nn.LayerNorm([3, 4]))
    with pytest.raises(ValueError, match=r'1: normalises over \(3, 4\).*nothing converted'):
        convert_layernorm_to_prepbn(model)
    assert isinstance(model[0], nn.LayerNorm)
    root, names = convert_layernorm_to_prepbn(nn.LayerNorm(4, elementwise_affine=False))
    assert isinstance(root, PRepBN) and names == ['<root>']
    x = torch.randn(3, 4)
    assert_rel_close(root.eval()(x), nn.functional.layer_norm(x, (4, )), 1e-6)


def test_key_map_refuses_entries_that_are_not_a_layernorms():
    """A BatchNorm's entries, a wrong shape, LayerNorm and PRepBN entries together: a
    clear error naming the entry. The offline map checks every norm first and changes
    nothing; on load the norm raises before it loads anything (torch has loaded the
    modules before it by then)."""
    model = nn.Sequential(nn.Linear(4, 4), PRepBN(4))
    good = {'0.weight': torch.zeros(4, 4), '0.bias': torch.zeros(4),
            '1.weight': torch.full((4, ), 2.0), '1.bias': torch.ones(4)}
    mapped = layernorm_keys_to_prepbn(good, model)
    assert set(good) == {'0.weight', '0.bias', '1.weight', '1.bias'}  # input unchanged
    assert torch.equal(mapped['1.norm1.weight'], good['1.weight'])
    assert float(mapped['1.lam']) == 1.0 and '1.norm2.bn.running_var' in mapped
    bad = {
        'a BatchNorm': dict(good, **{'1.running_mean': torch.zeros(4),
                                     '1.running_var': torch.ones(4)}),
        'wrong shape': dict(good, **{'1.weight': torch.ones(5)}),
        'ambiguous': dict(good, **{'1.norm1.weight': torch.ones(4)}),
    }
    messages = {'a BatchNorm': r"1\.\{running_mean, running_var\} are a BatchNorm's "
                               'statistics',
                'wrong shape': r'1\.weight has shape \(5,\), a LayerNorm of 4 channels',
                'ambiguous': 'which to load is ambiguous'}
    for case, sd in bad.items():
        before = _state(model[1])
        with pytest.raises(ValueError, match=messages[case]):
            layernorm_keys_to_prepbn(sd, model)
        with pytest.raises(ValueError, match=r"PRepBN\(4\) at '1' cannot load this "
                                             r'checkpoint: .*' + messages[case]):
            model.load_state_dict(sd, strict=False)
        assert _same_state(before, _state(model[1])), case


def test_fold_refuses_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), PRepBN(4), nn.Sequential(RepBN(4)))
    model.train()
    model[1].lam = 0.25
    before = _state(model)
    for fold in (fold_norms, reparameterize):
        with pytest.raises(ValueError, match=r'1 PRepBN still mix in LayerNorm: 1 '
                                             r'\(lam=0\.25\)'):
            fold(model)
        assert model.training and _same_state(before, _state(model))
    with pytest.raises(ValueError, match='nothing to re-parameterize'):
        reparameterize(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    model[1].lam = 0.0
    assert reparameterize(model) == 2 and not model.training
    assert fold_norms(model) == []  # folded already: nothing left
    with pytest.raises(ValueError, match='deploy form .* has no lam to set'):
        model[1].lam = 0.5
    assert set_prepbn_lam(model, 0.5) == 0


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_deploy_form_builds_loads_and_runs_in_every_dtype(dtype):
    name, norm = build_norm_layer(dict(type='PRepBN', eps=1e-6, deploy=True), 8)
    assert name == 'ln' and norm.deploy and set(norm.state_dict()) == {'scale', 'shift'}
    name, rep = build_norm_layer(dict(type='RepBN', deploy=True), 8, postfix=1)
    assert name == 'repbn1' and set(rep.state_dict()) == {'scale', 'shift'}
    trained = PRepBN(8)
    trained.train()
    trained(torch.randn(64, 8) * 3 + 2)
    trained.eval()
    x = torch.randn(5, 8) * 3 + 2
    ref = trained(x.double() if False else x)
    trained.switch_to_deploy()
    norm.load_state_dict(trained.state_dict())
    assert_rel_close(norm(x), ref, 1e-6)
    out = norm.to(dtype)(x.to(dtype))  # float32 math in, the input's dtype out
    assert out.dtype == dtype
    assert_rel_close(out.float(), ref, 1e-2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert norm.float()(x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match='expected channels last'):
        norm(torch.randn(8, 3))


def test_padded_tokens_are_left_out_of_the_statistics():
    """A DETR encoder with PRepBN norms, in training, with ignore_padding: its outputs at
    the unpadded positions do not depend on what the padded tokens hold (float64), and the
    running statistics are those of the unpadded tokens; without it, they do."""
    from mmslab.prepbn.padding import ignore_padding, padding_aware_modules
    torch.manual_seed(0)
    encoder = tokens_model('mmdet_detr_encoder', dict(type='PRepBN')).double()
    set_prepbn_lam(encoder, 0.0)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True  # image 2: 4 of 10 tokens padded
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y = x.clone()
    y[mask] = torch.randn(int(mask.sum()), 16, dtype=torch.float64) * 5 + 3

    def run(model, tokens):
        model.train()
        return model(tokens, query_pos=torch.zeros_like(tokens), key_padding_mask=mask)

    plain = copy.deepcopy(encoder)
    assert not torch.allclose(run(plain, x)[~mask], run(copy.deepcopy(encoder), y)[~mask])
    assert padding_aware_modules(encoder) == [encoder]  # the encoder, not its layers
    assert ignore_padding(encoder) == 1 and ignore_padding(encoder) == 1  # idempotent
    a, b = copy.deepcopy(encoder), copy.deepcopy(encoder)
    assert_rel_close(run(a, x)[~mask], run(b, y)[~mask], EXACT)
    first = a.layers[0].norms[0].norm2
    assert first.token_mask is None  # only during the call
    assert torch.equal(first.bn.running_mean, b.layers[0].norms[0].norm2.bn.running_mean)
    # the first norm's input is the tokens themselves (post-norm layer after attention:
    # check the update rule on a bare RepBN instead)
    bare = RepBN(16).double()
    bare.token_mask = mask
    bare.train()
    bare(x)
    valid = x[~mask]
    assert_rel_close(bare.bn.running_mean, 0.1 * valid.mean(0), EXACT)
    assert_rel_close(bare.bn.running_var, 0.9 + 0.1 * valid.var(0, unbiased=True), EXACT)
    with pytest.raises(ValueError, match=r'padding mask of shape \(2, 10\) for tokens of '
                                         r'shape \(3, 16\)'):
        bare(torch.randn(3, 16, dtype=torch.float64))


def test_padding_tool_measures_what_padding_does(load_tool):
    """tools/prepbn_padding.py on its Deformable DETR: no padding, no shift; a padded
    batch shifts the all-token statistics away from the valid tokens'."""
    tool = load_tool('prepbn_padding')
    model = tool.build_model(0)
    same = tool.measure(copy.deepcopy(model), [(64, 64), (64, 64)], 0)
    assert same['padded'] == 0.0 and same['mean_shift'] == 0.0 and same['out_err'] == 0.0
    padded = tool.measure(copy.deepcopy(model), [(64, 64), (32, 32)], 0)
    assert 0.2 < padded['padded'] < 0.9 and padded['norms'] == 4
    assert padded['mean_shift'] > 0.01 and padded['var_ratio_hi'] < 1.0
