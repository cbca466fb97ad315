"""``frozen_stages`` means the same in both backbones (mmdet's Swin / ResNet meaning): -1
nothing; 0 the stem (the first patch embedding, with PVT's first position table); k >= 1
the stem and stages 0..k-1 with everything they hold."""
import pytest
import torch
from _mini import mini_kwargs

from mmslab.models import SLABPVT, SLABSwin

PVT_MINI = mini_kwargs('slab_pvt')
SWIN_MINI = mini_kwargs('slab_swin', depths=[1, 1, 1, 1])


def frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def expected_pvt(model, k):
    if k < 0:
        return set()
    stem = {n for n, _ in model.named_parameters()
            if n.startswith('stages.0.patch_embed.') or n == 'stages.0.pos_embed'}
    stages = {n for n, _ in model.named_parameters()
              if any(n.startswith(f'stages.{i}.') for i in range(k))}
    return stem | stages


def expected_swin(model, k):
    if k < 0:
        return set()
    prefixes = ['patch_embed.'] + [f'stages.{i}.' for i in range(k)] + [
        f'norm{i}.' for i in range(k)]
    return {n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))}


@pytest.mark.parametrize('k', [-1, 0, 1, 2, 4])
def test_pvt_frozen_stages(k):
    model = SLABPVT(**PVT_MINI, frozen_stages=k, drop_rate=0.1).train()
    assert frozen(model) == expected_pvt(model, k)
    stem = model.stages[0]
    assert stem.patch_embed.training is (k < 0) and stem.pos_drop.training is (k < 0)
    assert stem.blocks.training is (k < 1)
    if k == len(PVT_MINI['depths']):
        return  # all frozen: nothing to differentiate
    # the frozen part gets no gradient, the rest does
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n in expected_pvt(model, k)), n


@pytest.mark.parametrize('k', [-1, 0, 1, 2, 4])
def test_swin_frozen_stages(k):
    model = SLABSwin(**SWIN_MINI, frozen_stages=k, drop_rate=0.1).train()
    assert frozen(model) == expected_swin(model, k)
    assert model.patch_embed.training is (k < 0) and model.drop_after_pos.training is (k < 0)
    assert model.stages[0].training is (k < 1)


def test_frozen_stages_zero_freezes_the_stem_in_both():
    pvt = SLABPVT(**PVT_MINI, frozen_stages=0).train()
    swin = SLABSwin(**SWIN_MINI, frozen_stages=0).train()
    assert frozen(pvt) == {n for n, _ in pvt.named_parameters()
                           if n.startswith('stages.0.patch_embed.')} | {'stages.0.pos_embed'}
    assert frozen(swin) == {n for n, _ in swin.named_parameters()
                            if n.startswith('patch_embed.')}
