"""tools/prepbn_study.py without training: the configs it writes, its hooks and its table."""
import types

import pytest
import torch.nn as nn
from mmengine.config import Config

from mmslab.models import SLABPVT, RepBN
from mmslab.prepbn_study import (VARIANTS, FreezeRepBNStatsHook, MMDetPVTInitHook, table,
                                 write_config)

MINI = dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8], mlp_ratios=[4] * 4,
            depths=[1, 1, 2, 1])


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_configs_inherit_the_demo(tmp_path, variant: str) -> None:
    cfg = Config.fromfile(write_config(str(tmp_path / 'c.py'), variant, 3, '/data/x/', 128,
                                       300))
    assert cfg.randomness.seed == 3
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 300
    assert cfg.train_dataloader.dataset.data_root == '/data/x/'
    assert cfg.model.backbone.pretrain_img_size == 128
    assert cfg.model.roi_head.bbox_head.num_classes == 4  # from the demo config
    hooks = {h.type: h for h in cfg.custom_hooks}
    if variant == 'pvt_t':
        assert cfg.model.backbone.type == 'PyramidVisionTransformer' and not hooks
        assert 'depths' not in cfg.model.backbone  # the demo's SLABPVT keys were deleted
        return
    assert cfg.model.backbone.type == 'SLABPVT'
    assert cfg.model.backbone.embed_dims == MINI['embed_dims']
    prepbn = hooks['PRepBNHook']
    if variant == 'prepbn_late':  # LayerNorm until 150, decay 150 -> 240
        assert (prepbn.warmup_iters, prepbn.decay_iters) == (150, 90)


def test_freeze_hook_puts_repbn_statistics_in_eval_mode() -> None:
    model = nn.Module()
    model.backbone = SLABPVT(**MINI, norm_eval=False).train()
    bns = [m.bn for m in model.modules() if isinstance(m, RepBN)]
    hook = FreezeRepBNStatsHook(begin=0.8)
    hook.before_train_iter(types.SimpleNamespace(iter=79, max_iters=100, model=model), 0)
    assert all(bn.training for bn in bns)
    hook.before_train_iter(types.SimpleNamespace(iter=80, max_iters=100, model=model), 0)
    assert not any(bn.training for bn in bns)
    assert model.backbone.stages[0].blocks[0].mlp.fc1.training


def test_mmdet_pvt_init_hook() -> None:
    model = nn.Module()
    model.backbone = SLABPVT(**MINI)
    model.backbone.init_weights()
    proj = model.backbone.stages[0].blocks[0].attn.proj.weight.clone()
    MMDetPVTInitHook().before_train(types.SimpleNamespace(iter=0, model=model))
    blk = model.backbone.stages[0].blocks[0]
    assert blk.attn.q.weight.abs().max() <= (6 / (4 * 32)) ** 0.5
    assert blk.attn.q.weight.std() > 0.1 and blk.mlp.fc2.weight.std() > 0.2
    assert not blk.mlp.fc1.bias.any()
    assert (blk.attn.proj.weight == proj).all()  # the rest untouched
    q = blk.attn.q.weight.clone()
    MMDetPVTInitHook().before_train(types.SimpleNamespace(iter=5, model=model))  # resumed
    assert (blk.attn.q.weight == q).all()


def test_table() -> None:
    rs = [dict(variant='prepbn_bn', seed=s, bbox_mAP=b, segm_mAP=m, s_per_iter=t, final_lam=0.0)
          for s, b, m, t in ((0, 0.5, 0.6, 0.3), (1, 0.7, 0.8, 0.2))]
    rs.append(dict(rs[0], variant='prepbn_bn+recal100', recal_iters=100))
    text = table(rs, 'python tools/prepbn_study.py', 'setup')
    assert text.startswith('`python tools/prepbn_study.py`')
    lines = text.splitlines()
    assert "| (b) SLAB-PVT, PRepBN LN -> BN over 0.8 of the run (the demo's) | yes | " \
        '0.600 ± 0.141 | 0.700 ± 0.141 | 0.20 | 0, 1 |' in lines
    assert lines[-1].endswith('over 100 batches | yes | 0.500 | 0.600 | — | 0 |')
