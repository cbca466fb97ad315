"""tools/prepbn_study.py without training: the configs it writes and its table."""
import json
import os
import os.path as osp
import sys

import pytest
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))  # the tools' own modules (prepbn/)

from prepbn.config import write_config  # noqa: E402
from prepbn.table import table  # noqa: E402
from prepbn.variants import VARIANTS  # noqa: E402

BASE = osp.join(ROOT, 'configs', 'study', 'prepbn_study_base.py')
MINI = dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8], mlp_ratios=[4] * 4,
            depths=[1, 1, 2, 1])


def test_base_config_is_the_demo_with_the_study_settings() -> None:
    cfg = Config.fromfile(BASE)
    assert cfg.model.roi_head.bbox_head.num_classes == 4  # from the demo config
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 300
    assert cfg.model.train_cfg.rcnn.sampler.num == 64


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_configs_inherit_the_base(tmp_path, variant: str) -> None:
    path = write_config(str(tmp_path / 'c.py'), BASE, variant, 3, '/data/x/', 96, 120,
                        batch_size=2)
    cfg = Config.fromfile(path)
    assert cfg.randomness.seed == 3
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 120
    assert cfg.train_cfg.val_interval == 120 and cfg.default_hooks.checkpoint.interval == 120
    assert [s.end for s in cfg.param_scheduler] == [12, 120]
    assert cfg.train_dataloader.batch_size == 2
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == '/data/x/'
        assert [s.scale for s in dataset.pipeline if s.type == 'Resize'] == [(96, 96)]
    assert cfg.test_evaluator.ann_file == '/data/x/annotations/instances_val2017.json'
    assert cfg.model.backbone.pretrain_img_size == 96
    assert cfg.model.roi_head.bbox_head.num_classes == 4  # from the demo config
    assert '_delete_' not in open(path).read()
    hooks = {h.type: h for h in cfg.custom_hooks}
    if variant == 'pvt_t':
        assert cfg.model.backbone.type == 'PyramidVisionTransformer' and not hooks
        assert 'depths' not in cfg.model.backbone  # the demo's SLABPVT keys were deleted
        return
    assert cfg.model.backbone.type == 'SLABPVT'
    assert cfg.model.backbone.embed_dims == MINI['embed_dims']
    prepbn = hooks['PRepBNHook']
    if variant == 'prepbn_late':  # LayerNorm until 60, decay 60 -> 96
        assert (prepbn.warmup_iters, prepbn.decay_iters) == (60, 36)
    # the init is the variant's, whatever the demo config's is
    init = VARIANTS[variant].get('backbone', {}).get('init_cfg')
    if init is None:
        assert cfg.model.backbone.init_cfg is None
    else:
        assert cfg.model.backbone.init_cfg == {k: v for k, v in init.items() if k != '_delete_'}
    assert '_delete_' in (init or {'_delete_': True})  # VARIANTS left as they were


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


def _load_cli():
    import importlib.util
    spec = importlib.util.spec_from_file_location('prepbn_study_cli',
                                                  osp.join(ROOT, 'tools', 'prepbn_study.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_only_collects_finished_runs(tmp_path) -> None:
    """--table-only trains nothing: every finished seed of the variants, recalibrations
    after them; unfinished runs (no result.json) and other variants are left out."""
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
    text = _load_cli().main(['--work-dir', str(tmp_path), '--variants', 'prepbn_bn',
                             '--table-only'])
    rows = [line for line in text.splitlines() if line.startswith('| (b)')]
    assert rows[0].endswith('| yes | 0.550 ± 0.071 | 0.500 ± 0.000 | 0.30 | 0, 4 |')
    assert 'over 100 batches | yes | 0.400 | 0.500 | — | 0 |' in rows[1]
    assert len(rows) == 2 and not os.listdir(tmp_path / 'runs' / 'prepbn_bn_s1')
    assert (tmp_path / 'table.md').read_text() == text


def test_cli_rejects_a_missing_base_config(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _load_cli().main(['--work-dir', str(tmp_path), '--base-config',
                          str(tmp_path / 'none.py')])
    assert exc.value.code == 2
    assert 'argument --base-config: no such file' in capsys.readouterr().err


@pytest.mark.slow
def test_study_end_to_end(tmp_path) -> None:
    """A tiny study: one variant, one seed, mmdet's train.py with validation at the end,
    then BN recalibration (tools/recalibrate_bn.py) and its test (mmdet's test.py); a rerun resumes
    from the kept results (no training)."""
    argv = ['--work-dir', str(tmp_path), '--variants', 'prepbn_bn', '--seeds', '0',
            '--iters', '10', '--image-size', '64', '--num-train', '8', '--num-val', '4',
            '--batch-size', '2', '--recal-iters', '2', '--threads', '1']
    text = _load_cli().main(argv)
    rows = [line for line in text.splitlines() if line.startswith('| (b)')]
    assert len(rows) == 2 and 'over 2 batches' in rows[1], text
    run = tmp_path / 'runs' / 'prepbn_bn_s0'
    result = json.loads((run / 'result.json').read_text())
    assert result['final_lam'] == 0.0 and result['finite_loss']
    recal = json.loads((run / 'recal2' / 'result.json').read_text())
    assert osp.isfile(run / 'recal2' / 'recalibrated.pth') and 'bbox_mAP' in recal
    mtime = (run / 'result.json').stat().st_mtime
    assert _load_cli().main(argv) == text.replace(' '.join(argv), ' '.join(argv))
    assert (run / 'result.json').stat().st_mtime == mtime  # resumed, not retrained
