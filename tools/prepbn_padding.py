"""What padded positions do to RepBN's BatchNorm statistics in a DETR-family encoder.

DETR-family detectors pad the images of a batch to one size; the encoder's tokens then
include padded positions (masked as attention keys, but normalised like any other token),
and a RepBN in the encoder takes its batch statistics over all of them. This tool builds
Deformable DETR with a PRepBN encoder (configs/prepbn/, narrowed as the e2e test does),
runs batches of two images whose sizes differ by a growing amount (the smaller one padded),
and reports for every encoder RepBN, over the channels:

* mean shift: ``|mean_all - mean_valid| / std_valid`` (median over channels, then the
  largest over the norms), where ``valid`` are the unpadded tokens;
* var ratio: ``var_all / var_valid`` (median over channels; the extreme over norms);
* output error: the RepBN output of the valid tokens normalised with all-token vs
  valid-token statistics, ``max |diff| / max |output|``.

    python tools/prepbn_padding.py [--seed 0]
"""
import argparse
import copy
import os.path as osp
import sys
from typing import Dict, List

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'prepbn',
                  'deformable_detr_prepbn_encoder_r50_16xb2_50e_coco.py')
NARROW = dict(
    num_queries=20, backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[128, 256, 512], out_channels=64),
    encoder=dict(num_layers=2, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=64, num_heads=4),
        ffn_cfg=dict(embed_dims=64, feedforward_channels=128))),
    decoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=64, num_heads=4),
        cross_attn_cfg=dict(embed_dims=64, num_heads=4),
        ffn_cfg=dict(embed_dims=64, feedforward_channels=128))),
    positional_encoding=dict(num_feats=32), bbox_head=dict(num_classes=4, embed_dims=64))


def build_model(seed: int):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    import mmslab  # noqa: F401
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(dict(model=NARROW))
    init_default_scope('mmdet')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()  # (Deformable DETR's level_embed is allocated uninitialised)
    return model


def measure(model, sizes, seed: int) -> Dict[str, float]:
    """Statistics of every encoder RepBN on one batch of images of ``sizes``."""
    from mmdet.structures import DetDataSample

    from mmslab.prepbn import RepBN
    gen = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(3, h, w, generator=gen) * 255 for h, w in sizes]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
               for h, w in sizes]
    data = model.data_preprocessor({'inputs': imgs, 'data_samples': samples}, False)
    captured: List[torch.Tensor] = []
    masks: List[torch.Tensor] = []
    encoder = model.encoder
    hooks = [encoder.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw['key_padding_mask']), with_kwargs=True)]
    norms = [m for m in encoder.modules() if isinstance(m, RepBN)]
    hooks += [n.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
              for n in norms]
    model.train()
    with torch.no_grad():  # backbone, neck, encoder
        feats = model.extract_feat(data['inputs'])
        encoder_inputs, _ = model.pre_transformer(feats, data['data_samples'])
        model.forward_encoder(**encoder_inputs)
    for h in hooks:
        h.remove()
    n_rows = captured[0].reshape(-1, captured[0].shape[-1]).shape[0]
    valid = (torch.ones(n_rows, dtype=torch.bool) if masks[0] is None  # nothing padded
             else ~masks[0].reshape(-1))  # key_padding_mask: True at padded positions
    shift, ratio_lo, ratio_hi, out_err = 0.0, float('inf'), 0.0, 0.0
    for x, norm in zip(captured, norms):
        rows = x.reshape(-1, x.shape[-1]).double()
        mean_a, var_a = rows.mean(0), rows.var(0, unbiased=False)
        mean_v, var_v = rows[valid].mean(0), rows[valid].var(0, unbiased=False)
        std_v = var_v.sqrt().clamp_min(1e-12)
        shift = max(shift, ((mean_a - mean_v).abs() / std_v).median().item())
        r = (var_a / var_v.clamp_min(1e-12)).median().item()
        ratio_lo, ratio_hi = min(ratio_lo, r), max(ratio_hi, r)
        eps = norm.bn.eps
        y_a = (rows[valid] - mean_a) / (var_a + eps).sqrt()
        y_v = (rows[valid] - mean_v) / (var_v + eps).sqrt()
        out_err = max(out_err, ((y_a - y_v).abs().max() / y_v.abs().max()).item())
    return dict(padded=1.0 - valid.double().mean().item(), mean_shift=shift,
                var_ratio_lo=ratio_lo, var_ratio_hi=ratio_hi, out_err=out_err,
                norms=len(norms))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    model = build_model(args.seed)
    print('| batch (H x W per image) | padded tokens | mean shift / std | var ratio '
          '(all / valid) | RepBN output error |')
    print('|---|---|---|---|---|')
    for sizes in ([(256, 256), (256, 256)], [(256, 256), (256, 192)],
                  [(256, 256), (192, 160)], [(256, 256), (128, 128)],
                  [(320, 192), (192, 320)], [(256, 256), (96, 64)]):
        r = measure(copy.deepcopy(model), sizes, args.seed)
        print(f"| {' + '.join(f'{h}x{w}' for h, w in sizes)} | {r['padded']:.0%} | "
              f"{r['mean_shift']:.3f} | {r['var_ratio_lo']:.2f} - {r['var_ratio_hi']:.2f} | "
              f"{r['out_err']:.3f} |")
    print(f"({r['norms']} encoder RepBNs; statistics of one train-mode batch)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
