"""SLABDeiT, the release's DeiT family (DeiT-PRepBN, DeiT-RepBN, SLAB-DeiT): the release's
classifier logits from its own state dicts (tests/data/cls), the exact fold, feature maps
at other sizes, argument errors, frozen_stages, autocast, checkpoint conversion."""
import copy
import json
import os
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn
from _tolerance import EXACT, assert_rel_close, rel_error
from mmengine.registry import MODELS

from mmslab.models import SLABDeiT, convert_deit, reparameterize
from mmslab.models.key_conversion import convert_checkpoint_file, dropped_keys
from mmslab.prepbn import PRepBN, RepBN

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'cls')
MANIFEST = json.load(open(os.path.join(DATA, 'manifest.json')))
# float32 against the release's float64 logits, relative to the largest: the acceptance
# bound (the suite's float32_tol(768, layers=2) -- the patch conv's 768-term sums through
# two blocks -- is 1.1e-4)
FLOAT32_TOL = 1e-4

MINI_ARCH = dict(embed_dims=48, depth=2, num_heads=3)
# the mini's release layout -> SLABDeiT options
MINIS: Dict[str, dict] = {
    'slab_deit_mini': dict(attention='sla', norm='PRepBN'),
    'deit_prepbn_mini': dict(attention='softmax', norm='PRepBN'),
    'deit_repbn_mini': dict(attention='softmax', norm='RepBN'),
}


def checkpoint(name: str) -> str:
    return os.path.join(DATA, f'{name}_official.pth')


def build(name: str, **overrides) -> SLABDeiT:
    """The mini backbone, loaded from the release file through its own init_cfg path."""
    kw = dict(arch=MINI_ARCH, **MINIS[name],
              init_cfg=dict(type='Pretrained', checkpoint=checkpoint(name)))
    kw.update(overrides)
    model = SLABDeiT(**kw)
    model.init_weights()
    return model.eval()


def release_head(name: str) -> nn.Linear:
    """The classifier head Linear(48, 10) from the release file's ``head.*``."""
    sd = torch.load(checkpoint(name), map_location='cpu', weights_only=True)['model']
    head = nn.Linear(*reversed(sd['head.weight'].shape))
    head.load_state_dict({'weight': sd['head.weight'], 'bias': sd['head.bias']})
    return head.eval()


_CACHE: Dict[str, Tuple[nn.Module, nn.Module, dict]] = {}


def classifier(name: str) -> Tuple[nn.Module, nn.Module, dict]:
    """(backbone, head, vector) of a mini, built once per module."""
    if name not in _CACHE:
        vector = torch.load(os.path.join(DATA, f'{name}_logits_224x224.pt'), weights_only=True)
        _CACHE[name] = (build(name), release_head(name), vector)
    backbone, head, vector = _CACHE[name]
    return copy.deepcopy(backbone), copy.deepcopy(head), vector


def logits(backbone: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        feats = backbone(x)
        assert len(feats) == 1 and feats[0].shape == (x.shape[0], head.in_features)
        return head(feats[0])


def test_every_vector_is_covered():
    assert set(MINIS) == {k for k in MANIFEST if not k.startswith('_')}
    for name in MINIS:
        assert MANIFEST[name]['kwargs']['embed_dim'] == MINI_ARCH['embed_dims']
        assert MANIFEST[name]['kwargs']['depth'] == MINI_ARCH['depth']
        assert MANIFEST[name]['kwargs']['num_heads'] == MINI_ARCH['num_heads']


@pytest.mark.parametrize('name', list(MINIS))
@pytest.mark.parametrize('dtype,tol', [(torch.float64, EXACT), (torch.float32, FLOAT32_TOL)])
def test_release_logits(name, dtype, tol):
    """The release's own classifier logits: backbone via init_cfg + the file's head."""
    backbone, head, vector = classifier(name)
    backbone.to(dtype)
    head.to(dtype)
    out = logits(backbone, head, vector['input'].to(dtype))
    assert out.dtype == dtype
    assert_rel_close(out, vector['logits'], tol, msg=f'{name} {dtype}')


@pytest.mark.parametrize('name', list(MINIS))
def test_fold_is_exact(name):
    """switch_to_deploy folds every norm (blocks into qkv / fc1, the final norm into its
    affine map): the same logits in float64; a deploy=True backbone loads the folded
    weights strictly; reparameterize() does the same."""
    backbone, head, vector = classifier(name)
    backbone.double()
    head.double()
    x = vector['input']
    ref = logits(backbone, head, x)
    folded = copy.deepcopy(backbone)
    folded.switch_to_deploy()
    assert folded.deploy
    assert not [n for n, m in folded.named_modules()
                if isinstance(m, (PRepBN, RepBN)) and not m.deploy]
    assert all(isinstance(b.norm1, nn.Identity) and isinstance(b.norm2, nn.Identity)
               for b in folded.blocks)
    assert_rel_close(logits(folded, head, x), ref, EXACT, msg='folded')
    assert_rel_close(logits(folded, head, x), vector['logits'], EXACT, msg='folded vs release')

    built = SLABDeiT(arch=MINI_ARCH, **MINIS[name], deploy=True).double().eval()
    built.load_state_dict(folded.state_dict(), strict=True)
    assert_rel_close(logits(built, head, x), ref, EXACT, msg='deploy=True')

    other = copy.deepcopy(backbone)
    assert reparameterize(nn.Sequential(other)) == 1
    assert other.deploy and not other.training
    assert_rel_close(logits(other, head, x), ref, EXACT, msg='reparameterize')


@pytest.mark.parametrize('name', list(MINIS))
@pytest.mark.parametrize('size,grid', [((160, 192), (10, 12)), ((170, 200), (11, 13))])
def test_featmap_at_other_sizes(name, size, grid):
    """out_type='featmap': (B, C, H/16, W/16) maps of every out index (an image not a
    multiple of 16 is zero-padded right / bottom), position tables resized."""
    model = build(name, out_type='featmap', out_indices=(0, 1))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 48, *grid)] * 2
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)
    assert model.feature_shapes(*size) == [(48, grid)] * 2
    # padding: the same as padding the image by hand
    padded = torch.zeros(2, 3, grid[0] * 16, grid[1] * 16)
    padded[:, :, :size[0], :size[1]] = x
    with torch.no_grad():
        assert torch.allclose(model(padded)[1], outs[1], atol=1e-5)


def test_featmap_and_avg_featmap_agree_at_224():
    """SLAB-DeiT's classifier feature is the mean of the last (normalised) map."""
    backbone, _, vector = classifier('slab_deit_mini')
    maps = build('slab_deit_mini', out_type='featmap').double()
    x = vector['input']
    with torch.no_grad():
        (avg,), (fmap,) = backbone.double()(x), maps(x)
    assert fmap.shape == (2, 48, 14, 14)
    assert_rel_close(fmap.mean(dim=(2, 3)), avg, EXACT)


def test_empty_batch():
    model = SLABDeiT(arch=MINI_ARCH, out_indices=(0, 1)).eval()
    assert [o.shape for o in model(torch.zeros(0, 3, 64, 64))] == [(0, 48)] * 2
    model = SLABDeiT(arch=MINI_ARCH, attention='sla', out_type='featmap').eval()
    assert [o.shape for o in model(torch.zeros(0, 3, 64, 80))] == [(0, 48, 4, 5)]


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(attention='linear'), ValueError, r"attention must be one of \['softmax', 'sla'\]"),
    (dict(norm='LN'), ValueError, r"norm must be one of \['PRepBN', 'RepBN'\]"),
    (dict(out_type='raw'), ValueError, 'out_type must be one of'),
    (dict(attention='sla', with_cls_token=True), ValueError, 'takes no class token'),
    (dict(with_cls_token=False, out_type='cls_token'), ValueError, 'needs with_cls_token=True'),
    (dict(arch='huge'), ValueError, 'unknown arch'),
    (dict(arch=dict(embed_dims=48, depth=2, num_heads=5)), ValueError, 'not divisible'),
    (dict(arch=dict(embed_dims=48, depth=2, num_heads=3, width=4)), ValueError,
     'not structural settings'),
    (dict(depth=0), ValueError, 'depth must be >= 1'),
    (dict(out_indices=2), ValueError, r'out_indices=\(2,\) must be distinct'),
    (dict(frozen_stages=3), ValueError, r'frozen_stages must be in \[-1, 2\]'),
    (dict(patch_size=0), ValueError, 'patch_size must be >= 1'),
    (dict(pretrain_img_size=200), ValueError, 'not a multiple of patch_size=16'),
    (dict(drop_path_rate=1.5), ValueError, r'drop_path_rate must be in \[0, 1\]'),
    (dict(final_norm=1), TypeError, 'final_norm must be True or False'),
    (dict(attention=1), TypeError, 'attention must be one of'),
])
def test_bad_arguments(kwargs, error, match):
    kw = dict(arch=MINI_ARCH)
    kw.update(kwargs)
    with pytest.raises(error, match=match):
        SLABDeiT(**kw)


def test_bad_inputs():
    model = SLABDeiT(arch=MINI_ARCH).eval()
    with pytest.raises(ValueError, match=r'expects images \(B, 3, H, W\)'):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match='float64 input but its weights are torch.float32'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))


def test_release_file_of_another_layout_is_refused():
    """A SLAB-DeiT file (no class-token position) into a class-token backbone, and a DeiT
    file into an SLA backbone: errors that say what to change."""
    with pytest.raises(ValueError, match='has no class-token entry.*with_cls_token=False'):
        build('slab_deit_mini', attention='softmax')
    with pytest.raises(ValueError, match='missing keys: .*positional_encoding'):
        build('deit_prepbn_mini', attention='sla')


def test_checkpoint_adaptation():
    """Class-token entry dropped without a class token (as mmpretrain), tables resized to
    another pretraining grid, the head left out with a logged note."""
    ref = build('deit_prepbn_mini')
    no_cls = build('deit_prepbn_mini', with_cls_token=False)
    assert not hasattr(no_cls, 'cls_token')
    assert torch.equal(no_cls.pos_embed, ref.pos_embed[:, 1:])
    small = build('slab_deit_mini', pretrain_img_size=(160, 192))
    assert small.pos_embed.shape == (1, 120, 48)
    assert small.blocks[0].attn.positional_encoding.shape == (1, 120, 48)
    sd = torch.load(checkpoint('slab_deit_mini'), weights_only=True)['model']
    assert 'head.weight' in dropped_keys(sd) and 'norm.iter' in dropped_keys(sd)
    assert 'cls_token' not in dropped_keys(sd) and 'norm.norm1.weight' not in dropped_keys(sd)


def test_convert_deit_keeps_the_head(tmp_path):
    """The 'deit' converter: counters dropped, everything else (head too) by its name; the
    offline file loads through init_cfg to the same backbone."""
    sd = torch.load(checkpoint('deit_prepbn_mini'), weights_only=True)['model']
    out = convert_deit(sd)
    assert set(out) == {k for k in sd if not k.endswith(('.iter', '.total_step', '.warm'))}
    assert {'head.weight', 'head.bias', 'cls_token', 'norm.norm2.alpha'} <= set(out)
    dst = str(tmp_path / 'converted.pth')
    assert convert_checkpoint_file(checkpoint('deit_prepbn_mini'), dst, 'deit') == len(out)
    backbone, head, vector = classifier('deit_prepbn_mini')
    again = build('deit_prepbn_mini', init_cfg=dict(type='Pretrained', checkpoint=dst))
    x = vector['input'][:1].float()
    assert torch.equal(logits(again, head, x), logits(backbone, head, x))


def test_registry_build_and_presets():
    model = MODELS.build(dict(type='SLABDeiT', arch='deit-small', attention='sla'))
    assert model.embed_dims == 384 and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == 6 and model.out_type == 'avg_featmap'
    assert model.blocks[0].attn.positional_encoding.shape == (1, 196, 384)
    assert SLABDeiT('tiny').pos_embed.shape == (1, 197, 192)


@pytest.mark.parametrize('k', [-1, 0, 1, 2])
def test_frozen_stages(k):
    model = SLABDeiT(arch=MINI_ARCH, frozen_stages=k, drop_rate=0.1).train()
    prefixes = [] if k < 0 else ['patch_embed.', 'pos_embed', 'cls_token'] + [
        f'blocks.{i}.' for i in range(k)] + (['norm.'] if k == 2 else [])
    expected = {n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    assert model.pos_drop.training is (k < 0)
    for i, blk in enumerate(model.blocks):
        assert blk.norm1.norm2.bn.training is (i >= k)
    assert model.norm.training is (k < 2)
    if k < 2:  # the frozen part gets no gradient, the rest does
        model(torch.randn(2, 3, 32, 32))[0].sum().backward()
        assert {n for n, p in model.named_parameters() if p.grad is None} == expected


def test_norm_eval_and_with_cp():
    """norm_eval keeps the BatchNorms in eval mode; with_cp gives the same gradients."""
    model = SLABDeiT(arch=MINI_ARCH, attention='sla', norm_eval=True).train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    torch.manual_seed(0)
    plain = SLABDeiT(arch=MINI_ARCH, attention='sla', drop_path_rate=0.1).double()
    plain.init_weights()
    ckpt = copy.deepcopy(plain)
    ckpt.with_cp = True
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(1)  # the same drop-path draws
        m.train()(x)[0].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert rel_error(grads[1], grads[0]) <= EXACT


@pytest.mark.parametrize('name', list(MINIS))
def test_cpu_bfloat16_autocast_is_finite(name):
    backbone, head, vector = classifier(name)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = head(backbone(vector['input'].float())[0])
    assert torch.isfinite(out).all()
    assert rel_error(out.float(), vector["logits"]) < 0.05  # measured <= 0.7%
