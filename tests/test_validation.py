"""Argument checking: every bad constructor argument or option value gives one clear error
at construction -- TypeError for a wrong type, ValueError for a wrong value -- whose message
names the owner, the argument, the value and what is accepted (mmslab.validation and its
users: the backbones, the norms, SLA, init_cfg); unusual but valid values work.
(The tools' command lines: tests/test_cli.py.)"""
import argparse

import pytest
import torch
from _mini import mini_kwargs

from mmslab.models import SLABPVT, SLABSwin
from mmslab.prepbn import PRepBN, RepBN
from mmslab.models import SimplifiedLinearAttention as SLA
from mmslab.validation import (argparse_float, argparse_int, check_bool, check_choice,
                               check_float, check_float_seq, check_int, check_int_seq,
                               check_size_2d, check_str_letters)

PVT = mini_kwargs('slab_pvt')
SWIN = mini_kwargs('slab_swin', embed_dims=32)  # the messages quote its widths (32, 64)


# ============================================================================ helpers
class TestValidationHelpers:
    """mmslab.validation: TypeError for a wrong type, ValueError for a wrong value, and a
    message with the owner, the argument, the value and what is accepted."""

    def test_int(self):
        assert check_int('SLABPVT', 'frozen_stages', 2, min=-1, max=4) == 2
        with pytest.raises(ValueError, match=r'^SLABPVT: frozen_stages must be in \[-1, 4\], '
                           r'got 7$'):
            check_int('SLABPVT', 'frozen_stages', 7, min=-1, max=4)
        with pytest.raises(TypeError, match=r'frozen_stages must be an int in \[-1, 4\], got '
                           r'1\.0 \(float\)'):
            check_int('SLABPVT', 'frozen_stages', 1.0, min=-1, max=4)
        with pytest.raises(TypeError, match=r'X: n must be an int >= 1, got True \(bool\)'):
            check_int('X', 'n', True, min=1)

    def test_float(self):
        assert check_float('A', 'rate', 0, min=0, max=1) == 0.0  # an int is a number
        assert isinstance(check_float('A', 'rate', 0, min=0, max=1), float)
        with pytest.raises(ValueError, match=r'A: drop_path_rate must be in \[0, 1\], got -0\.3'):
            check_float('A', 'drop_path_rate', -0.3, min=0, max=1)
        with pytest.raises(ValueError, match=r'A: eps must be > 0, got 0'):
            check_float('A', 'eps', 0, min=0, min_open=True)
        with pytest.raises(ValueError, match=r'A: eps must be > 0, got nan'):
            check_float('A', 'eps', float('nan'), min=0, min_open=True)
        with pytest.raises(ValueError, match=r'A: x must be a finite number, got inf'):
            check_float('A', 'x', float('inf'))
        with pytest.raises(TypeError, match=r"A: x must be a number in \[0, 1\], got '0\.5' "
                           r'\(str\)'):
            check_float('A', 'x', '0.5', min=0, max=1)
        with pytest.raises(TypeError, match=r'got False \(bool\)'):
            check_float('A', 'x', False)

    def test_sequences(self):
        assert check_int_seq('S', 'depths', [2, 2], length=2, min=1) == (2, 2)
        assert check_int_seq('S', 'window_sizes', 7, length=4, min=1, scalar=True) == (7,) * 4
        with pytest.raises(ValueError, match=r'S: num_heads must be a sequence of 4 ints >= 1, '
                           r'got \(1, 0, 4, 8\): entry 1 is 0'):
            check_int_seq('S', 'num_heads', (1, 0, 4, 8), length=4, min=1)
        with pytest.raises(ValueError, match=r'S: num_heads=\[1, 2\] has 2 entries, expected 4 '
                           r'\(one per stage\)'):
            check_int_seq('S', 'num_heads', [1, 2], length=4, min=1, length_hint='one per stage')
        with pytest.raises(TypeError, match=r'S: out_indices must be a sequence of ints, got '
                           r'\(0, 1\.0\): entry 1 is 1\.0 \(float\)'):
            check_int_seq('S', 'out_indices', (0, 1.0))
        with pytest.raises(TypeError, match=r"got 'abc' \(str\)"):
            check_int_seq('S', 'depths', 'abc')
        with pytest.raises(ValueError, match=r'at least 1 entry, got \(\)'):
            check_int_seq('S', 'out_indices', (), min_length=1)
        assert check_float_seq('S', 'mlp_ratios', [4, 2.5], min=0, min_open=True) == (4.0, 2.5)
        with pytest.raises(ValueError, match=r'S: mlp_ratios must be a sequence of numbers > 0, '
                           r'got \[4, 0\]: entry 1 is 0'):
            check_float_seq('S', 'mlp_ratios', [4, 0], min=0, min_open=True)

    def test_size_choice_letters_bool(self):
        assert check_size_2d('P', 'pretrain_img_size', 224, min=32) == (224, 224)
        assert check_size_2d('P', 'pretrain_img_size', [224, 320], min=32) == (224, 320)
        with pytest.raises(ValueError, match=r'P: pretrain_img_size must be an int >= 32 or a '
                           r'\(height, width\) pair of ints >= 32, got 16$'):
            check_size_2d('P', 'pretrain_img_size', 16, min=32)
        with pytest.raises(TypeError, match=r"pretrain_img_size must be .*, got '224' \(str\)"):
            check_size_2d('P', 'pretrain_img_size', '224', min=32)
        assert check_choice('t', 'family', 'pvt', ['pvt', 'swin']) == 'pvt'
        with pytest.raises(ValueError, match=r"t: family must be one of \['pvt', 'swin'\], "
                           r"got 'vit'"):
            check_choice('t', 'family', 'vit', ['pvt', 'swin'])
        with pytest.raises(TypeError, match=r'got 3 \(int\)'):
            check_choice('t', 'family', 3, ['pvt', 'swin'])
        # unusual but valid: a list of letters, lower case
        assert check_str_letters('S', 'attn_types', ['l', 'L', 's', 'S'], 'LS', 4) == 'LLSS'
        with pytest.raises(ValueError, match=r"S: attn_types must be a string of 4 letters, each "
                           r"'L' or 'S', got 'LLXS' \('X' not accepted\)"):
            check_str_letters('S', 'attn_types', 'LLXS', 'LS', 4)
        with pytest.raises(TypeError, match=r'got None \(NoneType\)'):
            check_str_letters('S', 'attn_types', None, 'LS', 4)
        assert check_bool('B', 'deploy', True) is True
        with pytest.raises(TypeError, match=r'B: deploy must be True or False, got 1 \(int\)'):
            check_bool('B', 'deploy', 1)

    def test_argparse_types(self):
        parser = argparse.ArgumentParser(prog='tool', exit_on_error=False)
        parser.add_argument('--iters', type=argparse_int(min=1))
        parser.add_argument('--rtol', type=argparse_float(min=0, min_open=True))
        args = parser.parse_args(['--iters', '3', '--rtol', '1e-3'])
        assert (args.iters, args.rtol) == (3, 1e-3)
        for argv, words in ((['--iters', '0'], 'argument --iters: must be >= 1, got 0'),
                            (['--iters', '1.5'], "argument --iters: must be an int >= 1, got "
                                                 "'1.5'"),
                            (['--rtol', '-1'], 'argument --rtol: must be a finite number > 0, '
                                               'got -1'),
                            (['--rtol', 'nan'], 'argument --rtol: must be a finite number > 0'),
                            (['--rtol', 'x'], "argument --rtol: must be a number > 0, got 'x'")):
            with pytest.raises(argparse.ArgumentError) as exc:
                parser.parse_args(argv)
            assert words in str(exc.value)


# ============================================================================ init_cfg
@pytest.mark.parametrize('init_cfg,error,words', [
    (dict(type='Pretrained', checkpoint=None), ValueError,
     r"SLABPVT: init_cfg=.* has type 'Pretrained' but no checkpoint: 'checkpoint' must be the "
     r'path or URL of a checkpoint file\. To train from scratch, set init_cfg=None'),
    (dict(type='Pretrained'), ValueError, r"has type 'Pretrained' but no checkpoint"),
    (dict(type='Pretrained', checkpoint=7), TypeError,
     r"SLABPVT: init_cfg 'checkpoint' must be a path or URL \(a non-empty str\), got 7 \(int\)"),
    (dict(type='Pretrained', checkpoint=''), TypeError, r"got '' \(str\)"),
    (dict(type='Pretrained', checkpoint='x.pth', prefix=1), TypeError,
     r"SLABPVT: init_cfg 'prefix' must be a str such as 'backbone.', got 1 \(int\)"),
    ([dict(type='Pretrained', checkpoint=None)], ValueError, r'but no checkpoint'),
    ('x.pth', TypeError, r"SLABPVT: init_cfg must be a dict \(or a list of dicts\), got 'x.pth'"),
])
def test_bad_init_cfg_fails_at_construction(init_cfg, error, words):
    with pytest.raises(error, match=words):
        SLABPVT(**PVT, init_cfg=init_cfg)


# ============================================================================ backbones
@pytest.mark.parametrize('kw,error,words', [
    (dict(num_heads=[1, 0, 5, 8]), ValueError,
     r'SLABPVT: num_heads must be a sequence of 4 ints >= 1, got \[1, 0, 5, 8\]: entry 1 is 0'),
    (dict(frozen_stages=1.0), TypeError,
     r'SLABPVT: frozen_stages must be an int in \[-1, 4\], got 1\.0 \(float\)'),
    (dict(frozen_stages=5), ValueError, r'SLABPVT: frozen_stages must be in \[-1, 4\], got 5'),
    (dict(out_indices=(0, 1.0)), TypeError,
     r'SLABPVT: out_indices must be a sequence of ints .*got \(0, 1\.0\): entry 1 is 1\.0 '
     r'\(float\)'),
    (dict(out_indices=2.0), TypeError, r'SLABPVT: out_indices must be .*got 2\.0 \(float\)'),
    (dict(out_indices=(0, 0)), ValueError,
     r'SLABPVT: out_indices=\(0, 0\) must be distinct stage indices in \[0, 3\]'),
    (dict(out_indices=()), ValueError, r'SLABPVT: out_indices must be .* at least 1 entry'),
    (dict(attn_types=None), TypeError,
     r"SLABPVT: attn_types must be a string of 4 letters, each 'L' \(SLA\) or 'S' "
     r"\(spatial-reduction softmax attention\), got None \(NoneType\)"),
    (dict(attn_types='LLXL'), ValueError, r"got 'LLXL' \('X' not accepted\)"),
    (dict(attn_types='LLL'), ValueError,
     r"SLABPVT: attn_types='LLL' has 3 entries, expected 4 \(one per stage: depths=\[1, 1, 1, "
     r"1\] has 4 stages\)"),
    (dict(pretrain_img_size=16), ValueError,
     r'SLABPVT: pretrain_img_size must be an int >= 32 or a \(height, width\) pair of ints '
     r'>= 32, got 16'),
    (dict(pretrain_img_size='224'), TypeError,
     r"SLABPVT: pretrain_img_size must be .*, got '224' \(str\)"),
    (dict(pretrain_img_size=(224, 224, 3)), ValueError, r'got \(224, 224, 3\)'),
    (dict(in_channels=0), ValueError, r'SLABPVT: in_channels must be >= 1, got 0'),
    (dict(drop_path_rate=-0.3), ValueError,
     r'SLABPVT: drop_path_rate must be in \[0, 1\], got -0\.3'),
    (dict(drop_rate=1.5), ValueError, r'SLABPVT: drop_rate must be in \[0, 1\], got 1\.5'),
    (dict(mlp_ratios=[8, 0, 4, 4]), ValueError,
     r'SLABPVT: mlp_ratios must be a sequence of 4 numbers > 0, got \[8, 0, 4, 4\]: entry 1 '
     r'is 0'),
    (dict(mlp_ratios=[8, 8, 4, 0.01]), ValueError,
     r'SLABPVT: mlp_ratios\[3\]=0\.01 gives an MLP of int\(64 \* 0\.01\) = 0 hidden channels'),
    (dict(sr_ratios=[8, 0, 2, 1], attn_types='SSSS'), ValueError,
     r'SLABPVT: sr_ratios must be a sequence of 4 ints >= 1 \(or one int for all\), got '
     r'\[8, 0, 2, 1\]: entry 1 is 0'),
    (dict(sr_ratios=-2), ValueError, r'SLABPVT: sr_ratios must be .*, got -2'),
    (dict(embed_dims=[16, 32, 0, 64]), ValueError, r'SLABPVT: embed_dims must be a sequence of 4 '
                                                   r'ints >= 1, got \[16, 32, 0, 64\]'),
    (dict(embed_dims=64), TypeError, r'SLABPVT: embed_dims must be a sequence of 4 ints >= 1, '
                                     r'got 64 \(int\)'),
    (dict(embed_dims=[16, 30, 40, 64], num_heads=[1, 4, 5, 8]), ValueError,
     r'SLABPVT: embed_dims\[1\]=30 is not divisible by num_heads\[1\]=4'),
    (dict(depths=[]), ValueError, r'SLABPVT: depths must be a sequence of ints >= 1 with at '
                                  r'least 1 entry, got \[\]'),
    (dict(depths=[1, 0, 1, 1]), ValueError, r'SLABPVT: depths must be .*entry 1 is 0'),
    (dict(arch=3), TypeError, r"SLABPVT: unknown arch 3; choose one of \['large', 'medium', "
                              r"'small', 'tiny'\] or give a dict"),
    (dict(with_cp='yes'), TypeError, r"SLABPVT: with_cp must be True or False, got 'yes'"),
])
def test_slab_pvt_arguments(kw, error, words):
    with pytest.raises(error, match=words):
        SLABPVT(**{**PVT, **kw})


@pytest.mark.parametrize('kw,error,words', [
    (dict(num_heads=[1, 0, 4, 8]), ValueError,
     r'SLABSwin: num_heads must be a sequence of 4 ints >= 1, got \[1, 0, 4, 8\]: entry 1 is 0'),
    (dict(num_heads=[1, 3, 4, 8]), ValueError,
     r'SLABSwin: stage 1 has embed_dims \* 2\*\*1 = 64 channels, not divisible by '
     r'num_heads\[1\]=3'),
    (dict(window_sizes=0), ValueError,
     r'SLABSwin: window_sizes must be a sequence of 4 ints >= 1 \(or one int for all\), got 0'),
    (dict(window_sizes=(56, 28, -7, 7)), ValueError, r'got \(56, 28, -7, 7\): entry 2 is -7'),
    (dict(window_sizes=(56, 28, 7.0, 7)), TypeError, r'entry 2 is 7\.0 \(float\)'),
    (dict(frozen_stages=0.0), TypeError,
     r'SLABSwin: frozen_stages must be an int in \[-1, 4\], got 0\.0 \(float\)'),
    (dict(frozen_stages=True), TypeError, r'got True \(bool\)'),
    (dict(out_indices=[0.0, 3]), TypeError, r'SLABSwin: out_indices .*entry 0 is 0\.0 \(float\)'),
    (dict(attn_types=None), TypeError,
     r"SLABSwin: attn_types must be a string of 4 letters, each 'L' \(SLA\) or 'S' \(window "
     r"softmax attention\), got None"),
    (dict(pretrain_img_size=0), ValueError,
     r'SLABSwin: pretrain_img_size must be an int >= 1 or a \(height, width\) pair'),
    (dict(pretrain_img_size=224.0), TypeError, r'got 224\.0 \(float\)'),
    (dict(in_channels=0), ValueError, r'SLABSwin: in_channels must be >= 1, got 0'),
    (dict(patch_size=0), ValueError, r'SLABSwin: patch_size must be >= 1, got 0'),
    (dict(drop_path_rate=-0.3), ValueError,
     r'SLABSwin: drop_path_rate must be in \[0, 1\], got -0\.3'),
    (dict(mlp_ratio=0), ValueError, r'SLABSwin: mlp_ratio must be > 0, got 0'),
    (dict(mlp_ratio=0.01), ValueError, r'SLABSwin: mlp_ratio=0\.01 gives stage 0 an MLP of '
                                       r'int\(32 \* 0\.01\) = 0 hidden channels'),
    (dict(embed_dims=0), ValueError, r'SLABSwin: embed_dims must be >= 1, got 0'),
    (dict(embed_dims=32.0), TypeError, r'SLABSwin: embed_dims is one int \(the stage-1 width'),
    (dict(depths=[2, 2, 2, 2, 2]), ValueError,
     r'SLABSwin: num_heads=\[1, 2, 4, 8\] has 4 entries, expected 5'),
    (dict(arch='huge', embed_dims=None, depths=None, num_heads=None), ValueError,
     r"SLABSwin: unknown arch 'huge'"),
    (dict(deploy=1), TypeError, r'SLABSwin: deploy must be True or False, got 1 \(int\)'),
])
def test_slab_swin_arguments(kw, error, words):
    with pytest.raises(error, match=words):
        SLABSwin(**{**SWIN, **kw})


@pytest.mark.parametrize('build_kw,match', [
    (dict(arch='huge'), "unknown arch 'huge'"),
    (dict(**SWIN, attn_types='LLS'), 'attn_types=.* has 3 entries'),
    (dict(**SWIN, attn_types='LLXS'), "'L' \\(SLA\\) or 'S'"),
    (dict(**SWIN, out_indices=(4,)), 'out_indices=\\(4,\\)'),
    (dict(**SWIN, frozen_stages=5), 'frozen_stages must be in'),
    (dict(embed_dims=[32, 64], depths=[2, 2], num_heads=[1, 2]), 'embed_dims is one int'),
])
def test_swin_bad_arguments(build_kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SLABSwin(**build_kw)


def test_unusual_but_valid_arguments_work():
    import numpy as np
    swin = SLABSwin(**{**SWIN, 'num_heads': [np.int64(1), 2, 4, 8]}, attn_types=['l', 'l',
                    's', 's'], window_sizes=7, out_indices=-1, drop_path_rate=0,
                    pretrain_img_size=[224, 320]).eval()
    assert swin.arch_settings['attn_types'] == 'LLSS' and swin.out_indices == (3, )
    assert swin.arch_settings['window_sizes'] == [7, 7, 7, 7]
    pvt = SLABPVT(**{**PVT, 'mlp_ratios': (8, 8, 4, 4.5)}, sr_ratios=2, attn_types='ssll',
                  out_indices=(3, 0), pretrain_img_size=(64, 96)).eval()
    assert pvt.out_indices == (0, 3)
    with torch.no_grad():
        assert [o.shape[1] for o in pvt(torch.randn(1, 3, 64, 64))] == [16, 64]
        assert swin(torch.randn(1, 3, 64, 64))[0].shape == (1, 256, 2, 2)


# ============================================================================ norms and attention
@pytest.mark.parametrize('build,error,words', [
    (lambda: PRepBN(0), ValueError, r'PRepBN: channels must be >= 1, got 0'),
    (lambda: PRepBN(8.0), TypeError, r'PRepBN: channels must be an int >= 1, got 8\.0 '
                                        r'\(float\)'),
    (lambda: PRepBN(8, ln_eps=0), ValueError, r'PRepBN: ln_eps must be > 0, got 0'),
    (lambda: PRepBN(8, bn_eps=-1e-5), ValueError, r'PRepBN: bn_eps must be > 0, got -1e-05'),
    (lambda: PRepBN(8, momentum=2), ValueError,
     r'PRepBN: momentum \(or None\) must be in \[0, 1\], got 2'),
    (lambda: RepBN(-4), ValueError, r'RepBN: channels must be >= 1, got -4'),
    (lambda: RepBN(4, eps='1e-5'), TypeError, r"RepBN: eps must be a number > 0, got '1e-5'"),
    (lambda: RepBN(4, momentum=-0.1), ValueError, r'RepBN: momentum \(or None\) must be in'),
    (lambda: SLA(0, 1, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: embed_dims must be >= 1, got 0'),
    (lambda: SLA(8, 0, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: num_heads must be >= 1, got 0'),
    (lambda: SLA(8, 3, (4, 4)), ValueError,
     r'SimplifiedLinearAttention: embed_dims 8 is not divisible by num_heads 3'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=4), ValueError,
     r'SimplifiedLinearAttention: kernel_size must be odd .*, got 4'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=0), ValueError,
     r'SimplifiedLinearAttention: kernel_size must be >= 1, got 0'),
    (lambda: SLA(8, 2, (4, 4), kernel_size=5.0), TypeError, r'kernel_size must be an int'),
    (lambda: SLA(8, 2, (0, 4)), ValueError, r'SimplifiedLinearAttention: pos_grid must be'),
    (lambda: SLA(8, 2, (4, 4), qkv_layout='kvq'), ValueError,
     r"SimplifiedLinearAttention: qkv_layout must be one of \['qkv', 'q_kv'\], got 'kvq'"),
])
def test_norm_and_attention_arguments(build, error, words):
    with pytest.raises(error, match=words):
        build()


def test_norm_and_attention_unusual_but_valid():
    assert PRepBN(4, momentum=None).norm2.bn.momentum is None  # cumulative average
    assert RepBN(4, eps=1).bn.eps == 1
    attn = SLA(6, 6, 3, kernel_size=1)  # one channel per head, square grid as an int
    assert attn.pos_grid == (3, 3)
