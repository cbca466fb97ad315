"""The Deformable DETR encoder of ``configs/prepbn/`` as a benchmarked model: mmdet's
``DeformableDetrTransformerEncoder`` (6 layers, 256 channels) with its LayerNorms, or with
``norm_cfg=dict(type='PRepBN')`` as that config builds it, timed on the tokens that the
detector hands it for an image of the case's size.

The detector is built from the config (the stock LayerNorm encoder: the same config with
the encoder's ``norm_cfg`` back to ``dict(type='LN')``) and initialised with its own
``init_weights`` (its ``level_embed`` is allocated uninitialised); everything but the
encoder and what the detector's ``pre_transformer`` needs (positional encoding, level
embedding) is then dropped. The encoder's inputs -- the multi-scale token set, its
positional embedding, padding mask (None: mmdet passes none when no image of the batch
is padded), ``spatial_shapes``, ``level_start_index`` and ``valid_ratios`` -- are made by
the detector's own ``pre_transformer`` from random features of the sizes its ResNet +
ChannelMapper give (strides 8 / 16 / 32 / 64, each
level half the previous one rounded up: 800x1344 -> 100x168 + 50x84 + 25x42 + 13x21
tokens), once per input shape; the reference points are computed by the encoder in every
call, as in the detector. mmcv's ``MultiScaleDeformableAttention`` runs its PyTorch
implementation on the CPU (``grid_sample``) and the compiled op on CUDA.
"""
import copy
import logging
import os.path as osp
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'prepbn',
                  'deformable_detr_prepbn_encoder_r50_16xb2_50e_coco.py')
#: the first level's stride (ResNet C3), each further level twice the previous one
FIRST_STRIDE_LOG2 = 3
#: mini form (smoke tests): 2 encoder layers of 32 channels (the neck's GroupNorm has 32
#: groups); a narrow ResNet-18, which is dropped anyway
MINI = dict(
    num_queries=4, backbone=dict(depth=18, base_channels=8),
    neck=dict(in_channels=[16, 32, 64], out_channels=32),
    encoder=dict(num_layers=2, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=32, num_heads=4),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
    decoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=32, num_heads=4),
        cross_attn_cfg=dict(embed_dims=32, num_heads=4),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64))),
    positional_encoding=dict(num_feats=16), bbox_head=dict(num_classes=2, embed_dims=32))
#: what the encoder benchmark keeps of the detector
KEPT = ('encoder', 'positional_encoding')


def level_shapes(h: int, w: int, levels: int) -> Tuple[Tuple[int, int], ...]:
    """Feature-map sizes of the detector's levels for an ``h`` x ``w`` image: every
    stride-2 stage halves a side, rounding up (ResNet's 3x3 / pad 1 convs and max-pool,
    the ChannelMapper's extra stride-2 conv)."""
    shapes = []
    for level in range(FIRST_STRIDE_LOG2 + levels - 1):
        h, w = -(-h // 2), -(-w // 2)
        if level >= FIRST_STRIDE_LOG2 - 1:
            shapes.append((h, w))
    return tuple(shapes)


@lru_cache(maxsize=1)
def _config() -> Any:
    """The config, read once (an ``mmengine.config.Config``; callers copy it)."""
    from mmengine.config import Config
    return Config.fromfile(CONFIG)


class DetrEncoderOnTokens(nn.Module):
    """Deformable DETR's encoder on the token set of an image of ``x``'s size.

    ``forward(x)`` reads only ``x``'s batch, height, width and device: the encoder's
    inputs for that shape are made once (no gradient; random features, fixed seed, so every
    model of a run sees the same tokens) and reused. Returns ``(memory, )``.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detr = detector
        self._key: Optional[tuple] = None
        self._inputs: Dict[str, Any] = {}

    def encoder_inputs(self, batch: int, h: int, w: int,
                       device: torch.device) -> Dict[str, Any]:
        """What ``DeformableDETR.forward_encoder`` gets for ``batch`` unpadded images of
        ``h`` x ``w`` (made by the detector's ``pre_transformer``)."""
        from mmdet.structures import DetDataSample
        key = (batch, h, w, device)
        if key != self._key:
            gen = torch.Generator().manual_seed(0)
            c = self.detr.embed_dims
            feats = tuple(torch.randn(batch, c, *s, generator=gen).to(device)
                          for s in level_shapes(h, w, self.detr.num_feature_levels))
            samples = [DetDataSample(metainfo=dict(batch_input_shape=(h, w), img_shape=(h, w)))
                       for _ in range(batch)]
            with torch.no_grad():
                inputs, _ = self.detr.pre_transformer(feats, samples)
            self._key, self._inputs = key, inputs
        return self._inputs

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        b, _, h, w = x.shape
        return (self.detr.forward_encoder(**self.encoder_inputs(b, h, w, x.device))['memory'], )


def detector_config(prepbn: bool, mini: bool = False) -> Any:
    """The model config of the ``configs/prepbn/`` Deformable DETR as the benchmark builds
    it (``prepbn``: PRepBN encoder norms, as the config has them; else LayerNorm, mmdet's
    default; ``mini``: :data:`MINI`), a copy."""
    config = copy.deepcopy(_config())
    if mini:
        config.merge_from_dict(dict(model=MINI))
    cfg = config.model
    cfg.backbone.init_cfg = None  # (no download: the backbone is dropped)
    if not prepbn:
        cfg.encoder.layer_cfg.norm_cfg = dict(type='LN')
    # the decoder's deprecated `dropout=` writes into the default dropout_layer dict of
    # mmcv's MultiheadAttention, shared by every later one built in this process: pass
    # what it means explicitly instead (the decoder is dropped anyway)
    attn = cfg.decoder.layer_cfg.self_attn_cfg
    if 'dropout' in attn:
        p = attn.pop('dropout')
        attn.update(attn_drop=p, dropout_layer=dict(type='Dropout', drop_prob=p))
    return cfg


def build_detr_encoder(prepbn: bool, mini: bool = False) -> DetrEncoderOnTokens:
    """The encoder of the ``configs/prepbn/`` Deformable DETR (see
    :func:`detector_config`), initialised (seed 0, the same weights in both forms), in
    eval mode."""
    from mmdet.registry import MODELS
    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope
    cfg = detector_config(prepbn, mini)
    logger = MMLogger.get_current_instance()
    level = logger.level
    # one seed: the LayerNorm and PRepBN encoders get the same weights (the norms draw no
    # random numbers), so they differ in their norms only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmdet'):
            detector = MODELS.build(cfg)
        logger.setLevel(logging.WARNING)  # (not the line per parameter of the init report)
        try:
            detector.init_weights()
        finally:
            logger.setLevel(level)
    for name, _ in list(detector.named_children()):
        if name not in KEPT:
            delattr(detector, name)
    return DetrEncoderOnTokens(detector).eval()
