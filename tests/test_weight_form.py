"""Trained vs folded state dicts: folded needs real evidence (a qkv_pad buffer, or a
complete block without norms); a trimmed trained dict is neither."""
import pytest
import torch
from _mini import mini_backbone, trained_and_folded

from mmslab.models.weight_form import state_dict_form


@pytest.mark.parametrize('attn_types', ['LLLL', 'SSSS'])
def test_folded_pvt_is_recognised_by_a_complete_block(attn_types):
    trained, folded = trained_and_folded('slab_pvt', attn_types=attn_types)
    assert state_dict_form(trained)[0] == 'trained'
    form, keys = state_dict_form(folded)
    assert form == 'folded' and keys[0] == 'stages.0.blocks.0.mlp.fc1.weight'
    one_block = [k for k in folded if k.startswith('stages.1.blocks.0.')]
    assert state_dict_form(one_block) == ('folded', ['stages.1.blocks.0.mlp.fc1.weight'])


@pytest.mark.parametrize('keep', ['.mlp.', '.mlp.fc1.', 'attn.'])
def test_a_trimmed_trained_dict_is_neither(keep):
    """Only some keys of each block (no norm among them): no evidence of either form, so a
    trained-form backbone loads it (non-strictly)."""
    trained, _ = trained_and_folded('slab_pvt')
    trimmed = {k: v for k, v in trained.items() if keep in k}
    assert trimmed and state_dict_form(trimmed) == (None, [])
    model = mini_backbone('slab_pvt')
    missing, unexpected = model.load_state_dict(trimmed, strict=False)
    assert unexpected == [] and missing
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trimmed.items())


def test_folded_swin_is_recognised_by_qkv_pad():
    trained, folded = trained_and_folded('slab_swin', depths=[1, 1, 1, 1])
    assert state_dict_form(trained)[0] == 'trained'
    form, keys = state_dict_form(folded)
    assert form == 'folded' and all(k.endswith('qkv_pad') for k in keys)


def test_no_block_says_nothing():
    assert state_dict_form(['patch_embed.proj.weight', 'norm0.weight']) == (None, [])
    assert state_dict_form([]) == (None, [])
