"""Structural presets: frozen, validated dataclasses; training hyperparameters are not in
them (SLABSwin's drop_path_rate is a plain default, 0.1)."""
import dataclasses

import pytest

from mmslab.models import PVT_ARCHS, SLABPVT, SLABSwin, SWIN_ARCHS, PVTArch, SwinArch


def test_presets_are_frozen_instances():
    assert SLABPVT.arch_zoo is PVT_ARCHS and SLABSwin.arch_zoo is SWIN_ARCHS
    assert sorted(PVT_ARCHS) == ['large', 'medium', 'small', 'tiny']
    assert sorted(SWIN_ARCHS) == ['base', 'small', 'tiny']
    assert PVT_ARCHS['small'] == PVTArch(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                                         mlp_ratios=(8, 8, 4, 4), depths=(3, 4, 6, 3))
    assert SWIN_ARCHS['base'].widths == (128, 256, 512, 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SWIN_ARCHS['tiny'].embed_dims = 64
    for arch in (*PVT_ARCHS.values(), *SWIN_ARCHS.values()):
        assert 'drop_path_rate' not in dataclasses.asdict(arch)


def test_swin_drop_path_rate_is_a_plain_default():
    for arch in SWIN_ARCHS:
        model = SLABSwin(arch=arch)
        assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    model = SLABSwin(arch='small', drop_path_rate=0.3)
    assert model.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.3)


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match=r'PVTArch: embed_dims\[0\]=8 is not divisible by '
                       r'num_heads\[0\]=3'):
        PVTArch(embed_dims=(8,), num_heads=(3,), mlp_ratios=(4,), depths=(1,))
    with pytest.raises(TypeError, match='SwinArch: embed_dims is one int'):
        SwinArch(embed_dims=(32, 64), depths=(2, 2), num_heads=(1, 2))
    arch = SwinArch(embed_dims=32, depths=[2, 2], num_heads=[1, 2])
    assert arch.depths == (2, 2) and arch.num_stages == 2  # normalised to tuples


def test_arch_as_an_instance_a_dict_or_a_name_with_overrides():
    arch = SwinArch(embed_dims=16, depths=(1, 1), num_heads=(1, 2))
    two = dict(attn_types='LS', window_sizes=7, out_indices=(0, 1))
    model = SLABSwin(arch=arch, **two)
    assert model.arch == arch and model.num_features == [16, 32]
    model = SLABSwin(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2]), **two)
    assert model.arch == arch
    model = SLABPVT(arch='tiny', depths=[1, 1, 1, 1])
    assert model.arch == dataclasses.replace(PVT_ARCHS['tiny'], depths=(1, 1, 1, 1))
    assert model.arch_settings['depths'] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match=r"SLABSwin: arch settings \['drop_path_rate'\] are "
                       r'not structural settings of a SwinArch'):
        SLABSwin(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2], drop_path_rate=0.2))
    with pytest.raises(ValueError, match=r"SLABPVT: arch settings lack \['mlp_ratios'\]"):
        SLABPVT(arch=dict(embed_dims=[16], num_heads=[1], depths=[1]))
