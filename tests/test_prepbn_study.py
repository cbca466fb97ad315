"""tools/prepbn_study.py without training: the configs it writes and its table."""
import pytest
from mmengine.config import Config

from mmslab.prepbn_study import VARIANTS, table, write_config

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
    # the init is the variant's, whatever the demo config's is
    init = VARIANTS[variant].get('backbone', {}).get('init_cfg')
    if init is None:
        assert cfg.model.backbone.init_cfg is None
    else:
        assert cfg.model.backbone.init_cfg == {k: v for k, v in init.items() if k != '_delete_'}


def test_table() -> None:
    rs = [dict(variant='prepbn_bn', seed=s, bbox_mAP=b, segm_mAP=m, s_per_iter=t, final_lam=0.0)
          for s, b, m, t in ((0, 0.5, 0.6, 0.3), (1, 0.7, 0.8, 0.2))]
    rs.append(dict(rs[0], variant='prepbn_bn+recal100', recal_iters=100))
    text = table(rs, 'python tools/prepbn_study.py', 'setup')
    assert text.startswith('`python tools/prepbn_study.py`')
    lines = text.splitlines()
    assert '| (b) SLAB-PVT, PRepBN LN -> BN over 0.8 of the run | yes | ' \
        '0.600 ± 0.141 | 0.700 ± 0.141 | 0.20 | 0, 1 |' in lines
    assert lines[-1].endswith('over 100 batches | yes | 0.500 | 0.600 | — | 0 |')


def test_table_only_collects_finished_runs(tmp_path) -> None:
    """--table-only trains nothing: every finished seed of the variants, recalibrations
    after them; unfinished runs (no result.json) and other variants are left out."""
    import json
    import os

    from mmslab.prepbn_study import main

    def put(rel: str, **r) -> None:
        os.makedirs(tmp_path / 'runs' / rel)
        (tmp_path / 'runs' / rel / 'result.json').write_text(json.dumps(dict(
            s_per_iter=0.3, final_lam=0.0, segm_mAP=0.5, **r)))

    for seed, ap in ((4, 0.6), (0, 0.5)):
        put(f'prepbn_bn_s{seed}', variant='prepbn_bn', seed=seed, bbox_mAP=ap)
    put('prepbn_bn_s0/recal100', variant='prepbn_bn+recal100', seed=0, bbox_mAP=0.4,
        recal_iters=100)
    put('bn_alpha0_s0', variant='bn_alpha0', seed=0, bbox_mAP=0.9)  # not asked for
    os.makedirs(tmp_path / 'runs' / 'prepbn_bn_s1')  # unfinished
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'study_data.json').write_text(json.dumps(dict(
        num_train=200, num_val=50, image_size=128, seed=0)))
    text = main(['--work-dir', str(tmp_path), '--variants', 'prepbn_bn', '--table-only'])
    rows = [line for line in text.splitlines() if line.startswith('| (b)')]
    assert rows[0].endswith('| yes | 0.550 ± 0.071 | 0.500 ± 0.000 | 0.30 | 0, 4 |')
    assert 'over 100 batches | yes | 0.400 | 0.500 | — | 0 |' in rows[1]
    assert len(rows) == 2 and not os.listdir(tmp_path / 'runs' / 'prepbn_bn_s1')
