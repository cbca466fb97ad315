"""PRepBN / RepBN as norm layers of any OpenMMLab module: mmcv's ``build_norm_layer``
(``norm_cfg=dict(type='PRepBN')``), every channels-last layout, and inside stock mmdet /
mmseg transformers, where ``lam = 1`` computes exactly what the LayerNorm model computes."""
import pytest
import torch
import torch.nn as nn
from _tolerance import EXACT, assert_rel_close
from mmcv.cnn import build_norm_layer

from mmslab.models import PRepBN, RepBN, set_prepbn_lam


def test_build_norm_layer_names_eps_and_requires_grad():
    name, norm = build_norm_layer(dict(type='PRepBN', eps=1e-6), 64)
    assert name == 'ln' and isinstance(norm, PRepBN)  # named as the LayerNorm it replaces
    assert norm.norm1.eps == 1e-6 and norm.norm2.bn.eps == 1e-5  # eps: the LayerNorm's
    _, default = build_norm_layer(dict(type='PRepBN'), 8)
    _, ln = build_norm_layer(dict(type='LN'), 8)
    assert default.norm1.eps == ln.eps  # the same default as dict(type='LN')
    name, frozen = build_norm_layer(dict(type='PRepBN', requires_grad=False, bn_eps=1e-3,
                                         momentum=0.01), 16, postfix=2)
    assert name == 'ln2' and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.norm2.bn.eps == 1e-3 and frozen.norm2.bn.momentum == 0.01
    name, rep = build_norm_layer(dict(type='RepBN', eps=1e-4), 32, postfix=1)
    assert name == 'repbn1' and isinstance(rep, RepBN) and rep.bn.eps == 1e-4


def test_bad_arguments_and_layouts_are_named():
    with pytest.raises(ValueError, match='eps and ln_eps both name the LayerNorm eps'):
        PRepBN(8, ln_eps=1e-6, eps=1e-5)
    for norm in (PRepBN(8), RepBN(8)):
        with pytest.raises(ValueError, match=r'got a tensor of shape \(2, 8, 5\): expected '
                                             r'channels last, \(\.\.\., 8\)'):
            norm(torch.randn(2, 8, 5))  # channels first
        with pytest.raises(ValueError, match='expected channels last'):
            norm(torch.randn(8))


@pytest.mark.parametrize('shape', [(2, 7, 6), (7, 2, 6), (5, 6)], ids=['BNC', 'NBC', 'BC'])
def test_every_channels_last_layout(shape):
    """lam = 1: the LayerNorm over C; lam = 0: BatchNorm over every position + alpha * x;
    in train and eval, float64."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    norm = PRepBN(6, eps=1e-6).double()
    with torch.no_grad():
        norm.norm1.weight.uniform_(0.5, 1.5)
        norm.norm2.alpha.fill_(0.7)
    ln = nn.LayerNorm(6, eps=1e-6).double()
    ln.load_state_dict(norm.norm1.state_dict())
    rows = x.reshape(-1, 6)
    for training in (True, False):
        norm.train(training)
        norm.lam = 1.0
        assert_rel_close(norm(x), ln(x), EXACT)
        norm.lam = 0.0
        bn = nn.functional.batch_norm(rows, None, None, norm.norm2.bn.weight,
                                      norm.norm2.bn.bias, True, 0.0, 1e-5) if training else \
            (rows - norm.norm2.bn.running_mean) / (norm.norm2.bn.running_var + 1e-5).sqrt()
        assert_rel_close(norm(x), bn.view(shape) + 0.7 * x, EXACT)


def _tokens_model(kind: str, norm_cfg: dict) -> nn.Module:
    if kind == 'mmdet_pvtv2':
        from mmdet.models.backbones import PyramidVisionTransformerV2
        return PyramidVisionTransformerV2(embed_dims=16, num_layers=[1, 1, 1, 1],
                                          num_heads=[1, 1, 2, 2], norm_cfg=norm_cfg)
    if kind == 'mmdet_swin':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=16, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2),
                               window_size=4, norm_cfg=norm_cfg)
    if kind == 'mmdet_detr_encoder':
        from mmdet.models.layers.transformer import DetrTransformerEncoder
        return DetrTransformerEncoder(2, dict(
            self_attn_cfg=dict(embed_dims=16, num_heads=2),
            ffn_cfg=dict(embed_dims=16, feedforward_channels=32), norm_cfg=norm_cfg))
    if kind == 'mmseg_mit':
        from mmseg.models.backbones import MixVisionTransformer
        return MixVisionTransformer(embed_dims=16, num_layers=[1, 1, 1, 1],
                                    num_heads=[1, 1, 2, 2], norm_cfg=norm_cfg)
    from mmseg.models.backbones import VisionTransformer
    return VisionTransformer(img_size=(32, 32), patch_size=8, embed_dims=16, num_layers=2,
                             num_heads=2, out_indices=(1, ), final_norm=True,
                             norm_cfg=norm_cfg)


KINDS = ['mmdet_pvtv2', 'mmdet_swin', 'mmdet_detr_encoder', 'mmseg_mit', 'mmseg_vit']


def _run(kind: str, model: nn.Module, x: torch.Tensor):
    if kind == 'mmdet_detr_encoder':
        return (model(x, query_pos=torch.zeros_like(x), key_padding_mask=None), )
    return tuple(model(x))


@pytest.mark.parametrize('kind', KINDS)
def test_builds_inside_stock_modules_and_equals_layernorm_at_lam_1(kind):
    """``norm_cfg=dict(type='PRepBN', eps=1e-6)`` in place of ``dict(type='LN', eps=1e-6)``:
    every norm the module builds is a PRepBN; with the LayerNorm's weights in the LN
    branch and lam = 1 the module computes what the LN module computes (float64); it
    trains (finite gradients) at lam = 0.5."""
    torch.manual_seed(0)
    ln_model = _tokens_model(kind, dict(type='LN', eps=1e-6)).double()
    ln_model.eval()  # (mmdet's Swin.train() returns None)
    with torch.no_grad():
        for m in ln_model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    model = _tokens_model(kind, dict(type='PRepBN', eps=1e-6)).double()
    model.eval()
    n_ln = sum(isinstance(m, nn.LayerNorm) for m in ln_model.modules())
    prepbns = {n: m for n, m in model.named_modules() if isinstance(m, PRepBN)}
    assert n_ln > 0 and len(prepbns) == n_ln
    # the LN weights go to the LN branch (norm1) of the PRepBN of the same name
    state = {}
    for key, value in ln_model.state_dict().items():
        owner, _, leaf = key.rpartition('.')
        state[f'{owner}.norm1.{leaf}' if owner in prepbns else key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all('.norm2.' in k or k.endswith('.lam') for k in missing)
    assert set_prepbn_lam(model, 1.0) == n_ln
    x = (torch.randn(2, 10, 16) if kind == 'mmdet_detr_encoder'
         else torch.randn(2, 3, 32, 32)).double()
    with torch.no_grad():
        for a, b in zip(_run(kind, model, x), _run(kind, ln_model, x)):
            assert_rel_close(a, b, EXACT)
    set_prepbn_lam(model, 0.5)
    model.train()
    model.float()
    outs = _run(kind, model, x.float())
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(p.norm2.bn.running_mean).all() for p in prepbns.values())
