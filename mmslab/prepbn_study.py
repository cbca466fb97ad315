"""The PRepBN from-scratch study (issue 13): which norm schedule should a SLAB-PVT trained
from scratch use, with which init?

Trains Mask R-CNN from scratch on the synthetic shapes set (:mod:`mmslab.datasets`, the
demo's data at a smaller size) with the demo config (``configs/demo/
mask_rcnn_slab_pvt_demo.py``: the narrow SLAB-PVT, FPN / heads of 64 channels, AdamW
1e-3) and one backbone / norm schedule per *variant*, each with several seeds, and
reports box / mask AP (CocoMetric on the val split, mean +- sample std over the seeds)
and the training time per iteration as a markdown table.

Every run is a real ``mim train mmdet`` subprocess (an mmengine Runner, validation at
the end of the run); BN recalibration is :func:`mmslab.bn_recalibration.
recalibrate_checkpoint` followed by an mmengine ``Runner.test()`` of the written
checkpoint (one subprocess). Results are kept per run as ``<work_dir>/runs/<variant>_s
<seed>/result.json``: a rerun of the study skips finished runs (``--force`` redoes them),
so an interrupted study resumes where it stopped.

    python tools/prepbn_study.py --work-dir work_dirs/prepbn_study_300   # the README table
    python tools/prepbn_study.py --variants prepbn_bn ln_kept --seeds 0 1 2 3

Defaults: 300 iterations of batch 4 at 128 px (200 training / 50 val images), one torch
thread per run (on a shared CPU, two OpenMP threads that are descheduled in turn run
many times slower than one), 3 seeds, BN recalibration over 100 batches (two passes
over the training set) for ``prepbn_bn`` and ``bn_alpha0_pvtinit``.

Variants (``VARIANTS``; ``(a)``-``(d)`` are the issue's names). Every SLAB-PVT variant
states its backbone ``init_cfg``: ``None`` (the release's init: truncated normal std
0.02 on every Linear, RepBN ``alpha = 1``) unless it names ``SLABScratch`` settings
(:class:`mmslab.models.weight_init.SLABScratchInit`).

* ``pvt_t``: mmdet's stock ``PyramidVisionTransformer`` (PVT v1: softmax attention with
  spatial reduction, LayerNorm) at the width and depth of the demo's SLAB-PVT.
* ``ln_kept`` (a): SLAB-PVT keeping LayerNorm (``PRepBNHook`` lam = 1 throughout);
  evaluated as LayerNorm (eval mode honours lam). Not foldable.
* ``prepbn_bn`` (b): LayerNorm -> RepBN over the first 80% of the run (``r0=1,
  decay_iters=0.8``).
* ``bn_scratch`` (c): RepBN from the first iteration (``r0=0``).
* ``prepbn_early`` (d1): the decay ends at half the run (``decay_iters=0.5``).
* ``prepbn_late`` (d2): LayerNorm for the first half of the run (``warmup_iters``), the
  decay to RepBN from 0.5 to 0.8 of the run, pure RepBN for the last fifth.
* ``ln_pvtinit`` (control), ``prepbn_pvtinit`` (d3), ``bn_pvtinit`` (d4): (a), (b), (c)
  with ``SLABScratch(linear='mmdet_pvt')``: the attention input projections and the MLP
  initialised as mmdet's PVT initialises its own.
* ``bn_alpha0`` (d5): (c) with ``SLABScratch(repbn_alpha=0)``: RepBN starts as a BN.
* ``bn_alpha0_pvtinit`` (d6), ``prepbn_alpha0_pvtinit`` (d7), ``early_alpha0_pvtinit``
  (d8): (c), (b), (d1) with both, ``SLABScratch(linear='mmdet_pvt', repbn_alpha=0)``.
* BN recalibration (``--recal-iters``, on the checkpoints of ``--recal-variants``):
  the statistics re-estimated over N training batches (the loader cycles when N is more
  than an epoch), everything else unchanged; reported as ``<variant> + BN recal N``.
"""
import argparse
import glob
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_slab_pvt_demo.py')
# the demo's SLAB-PVT (configs/demo/mask_rcnn_slab_pvt_demo.py)
DEMO_WIDTH = dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8],
                  mlp_ratios=[4, 4, 4, 4], depths=[1, 1, 2, 1])
NEVER = 10**9  # warmup_iters that outlasts any run: lam stays at r0


def _scratch(linear: str, repbn_alpha: float = 1.0) -> dict:
    # _delete_: replaces whatever init_cfg the demo config has (None or a dict)
    return dict(_delete_=True, type='SLABScratch', linear=linear, repbn_alpha=repbn_alpha)


def _prepbn(r0: float = 1.0, warmup_iters: int = 0, decay_iters=0.8) -> dict:
    return dict(type='PRepBNHook', r0=r0, warmup_iters=warmup_iters, decay_iters=decay_iters)


#: name -> label, backbone override of the demo config, custom_hooks, foldable
VARIANTS: Dict[str, dict] = {
    'pvt_t': dict(
        label='mmdet PVT-T (LayerNorm, softmax SR attention)',
        backbone=dict(_delete_=True, type='PyramidVisionTransformer', embed_dims=32,
                      num_layers=DEMO_WIDTH['depths'], num_heads=DEMO_WIDTH['num_heads'],
                      mlp_ratios=DEMO_WIDTH['mlp_ratios'], sr_ratios=[8, 4, 2, 1],
                      out_indices=(0, 1, 2, 3), drop_path_rate=0.0, init_cfg=None),
        hooks=[], foldable=False),
    'ln_kept': dict(label='(a) SLAB-PVT, LayerNorm kept (lam = 1)',
                    hooks=[_prepbn(1.0, NEVER, 1)], foldable=False),
    'prepbn_bn': dict(label='(b) SLAB-PVT, PRepBN LN -> BN over 0.8 of the run',
                      hooks=[_prepbn(1.0, 0, 0.8)], foldable=True),
    'bn_scratch': dict(label='(c) SLAB-PVT, RepBN from the start (r0 = 0)',
                       hooks=[_prepbn(0.0)], foldable=True),
    'prepbn_early': dict(label='(d1) SLAB-PVT, PRepBN LN -> BN over 0.5 of the run',
                         hooks=[_prepbn(1.0, 0, 0.5)], foldable=True),
    # hooks as a function of the run length: PRepBNHook's warmup_iters is a count
    'prepbn_late': dict(
        label='(d2) SLAB-PVT, LayerNorm until 0.5 of the run, LN -> BN from 0.5 to 0.8',
        hooks=lambda iters: [_prepbn(1.0, iters // 2, round(0.3 * iters))], foldable=True),
    # the initialisation (init_cfg=dict(type='SLABScratch', ...), mmslab/models/weight_init.py)
    'ln_pvtinit': dict(
        label="(control) (a) with mmdet PVT's init of q/kv and MLP (`linear='mmdet_pvt'`)",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(1.0, NEVER, 1)],
        foldable=False),
    'prepbn_pvtinit': dict(
        label="(d3) (b) with `linear='mmdet_pvt'`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(1.0, 0, 0.8)],
        foldable=True),
    'bn_pvtinit': dict(
        label="(d4) (c) with `linear='mmdet_pvt'`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt')), hooks=[_prepbn(0.0)], foldable=True),
    'bn_alpha0': dict(
        label='(d5) (c) with RepBN alpha starting at 0 (`repbn_alpha=0`)',
        backbone=dict(init_cfg=_scratch('release', 0.0)), hooks=[_prepbn(0.0)], foldable=True),
    'bn_alpha0_pvtinit': dict(
        label="**(d6) (c) with `linear='mmdet_pvt', repbn_alpha=0`**",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(0.0)],
        foldable=True),
    'prepbn_alpha0_pvtinit': dict(
        label="(d7) (b) with `linear='mmdet_pvt', repbn_alpha=0`",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(1.0, 0, 0.8)],
        foldable=True),
    'early_alpha0_pvtinit': dict(
        label="**(d8) (d1) with `linear='mmdet_pvt', repbn_alpha=0` (the demo's)**",
        backbone=dict(init_cfg=_scratch('mmdet_pvt', 0.0)), hooks=[_prepbn(1.0, 0, 0.5)],
        foldable=True),
}
DEFAULT_VARIANTS = tuple(VARIANTS)
DEFAULT_RECAL_VARIANTS = ('prepbn_bn', 'bn_alpha0_pvtinit')

CONFIG_TEMPLATE = '''_base_ = [{base!r}]
# written by mmslab/prepbn_study.py: variant {variant!r}, seed {seed}
custom_imports = dict(imports=['mmslab'], allow_failed_imports=False)
data_root = {data_root!r}
image_size = {image_size}
max_iters = {iters}
warmup = {warmup}
# lighter RoI heads than the demo's (fewer sampled anchors / RoIs and proposals): the
# study compares backbones, and these dominate the iteration time on a CPU
model = dict(
    backbone={backbone!r},
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size={batch_size},
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup, eta_min_ratio=0.01,
         by_epoch=False, begin=warmup, end=max_iters)
]
custom_hooks = {hooks!r}
default_hooks = dict(logger=dict(interval={log_interval}),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed={seed})
'''


def make_data(root: str, num_train: int, num_val: int, image_size: int) -> str:
    """Write the synthetic shapes set (seed 0) unless it is there already."""
    from mmslab.datasets import make_coco_instances
    stamp = osp.join(root, 'study_data.json')
    want = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=0)
    if osp.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                return root + '/'
    make_coco_instances(root, num_train=num_train, num_val=num_val, image_size=image_size,
                        seed=0, img_ext='.png')
    with open(stamp, 'w') as f:
        json.dump(want, f)
    return root + '/'


def write_config(path: str, variant: str, seed: int, data_root: str, image_size: int,
                 iters: int, batch_size: int = 4, log_interval: int = 10) -> str:
    v = VARIANTS[variant]
    hooks = v['hooks'](iters) if callable(v['hooks']) else v['hooks']
    backbone = dict(v.get('backbone') or {})
    backbone['pretrain_img_size'] = image_size
    backbone.setdefault('init_cfg', None)  # the release's init unless the variant says
    text = CONFIG_TEMPLATE.format(
        base=DEMO_CONFIG, variant=variant, seed=seed, data_root=data_root,
        image_size=image_size, iters=iters, warmup=max(1, iters // 10), backbone=backbone,
        hooks=hooks, batch_size=batch_size, log_interval=log_interval)
    with open(path, 'w') as f:
        f.write(text)
    return path


def _json_log(work_dir: str) -> List[dict]:
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d, 'vis_data')))
    if not runs:
        raise RuntimeError(f'no mmengine run directory with a json log in {work_dir}')
    path = osp.join(work_dir, runs[-1], 'vis_data', runs[-1] + '.json')
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run(cmd: Sequence[str], log_file: str, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    with open(log_file, 'w') as f:
        proc = subprocess.run(list(cmd), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        with open(log_file) as f:
            tail = ''.join(f.readlines()[-40:])
        raise RuntimeError(f'`{" ".join(cmd)}` failed ({proc.returncode}); end of '
                           f'{log_file}:\n{tail}')
    return time.time() - start


def train_one(work_root: str, variant: str, seed: int, data_root: str, args) -> dict:
    """Train (and validate at the end) one variant / seed; return its result dict."""
    run_dir = osp.join(work_root, 'runs', f'{variant}_s{seed}')
    result_file = osp.join(run_dir, 'result.json')
    if osp.isfile(result_file) and not args.force:
        with open(result_file) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    cfg = write_config(osp.join(run_dir, 'config.py'), variant, seed, data_root,
                       args.image_size, args.iters, args.batch_size)
    work_dir = osp.join(run_dir, 'work')
    wall = _run([sys.executable, '-m', 'mim', 'train', 'mmdet', cfg, '--work-dir', work_dir],
                osp.join(run_dir, 'train.log'), args.threads)
    records = _json_log(work_dir)
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'coco/bbox_mAP' in r]
    if not val:
        raise RuntimeError(f'{variant} seed {seed}: no validation record in {work_dir}')
    times = [r['time'] for r in train[1:]] or [r['time'] for r in train]
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    result = dict(
        variant=variant, seed=seed, config=cfg, checkpoint=ckpt, wall_s=round(wall, 1),
        s_per_iter=sum(times) / len(times), bbox_mAP=val[-1]['coco/bbox_mAP'],
        segm_mAP=val[-1]['coco/segm_mAP'], final_lam=train[-1].get('prepbn_lam'),
        finite_loss=all(math.isfinite(r['loss']) for r in train))
    with open(result_file, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def recal_one(work_root: str, base: dict, iters: int, args) -> dict:
    """BN-recalibrate a trained run over ``iters`` batches and test it."""
    run_dir = osp.join(work_root, 'runs', f'{base["variant"]}_s{base["seed"]}',
                       f'recal{iters}')
    result_file = osp.join(run_dir, 'result.json')
    if osp.isfile(result_file) and not args.force:
        with open(result_file) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    out = osp.join(run_dir, 'metrics.json')
    # a fresh interpreter per recalibration, as for training: no Runner state is shared
    worker = ('import sys; from mmslab.prepbn_study import _recal_test_main as m; '
              'm(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])')
    wall = _run([sys.executable, '-c', worker, base['config'], base['checkpoint'], str(iters),
                 run_dir, out],
                osp.join(run_dir, 'recal_test.log'), args.threads)
    with open(out) as f:
        metrics = json.load(f)
    result = dict(base, variant=f'{base["variant"]}+recal{iters}', recal_iters=iters,
                  wall_s=round(wall, 1), bbox_mAP=metrics['coco/bbox_mAP'],
                  segm_mAP=metrics['coco/segm_mAP'])
    with open(result_file, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def _recal_test_main(config: str, checkpoint: str, iters: int, work_dir: str,
                     out: str) -> None:
    """(subprocess) recalibrate_checkpoint + Runner.test(); metrics to ``out``."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmslab.bn_recalibration import recalibrate_checkpoint
    recal = recalibrate_checkpoint(config, checkpoint, iters,
                                   out=osp.join(work_dir, 'recalibrated.pth'),
                                   cfg_options=dict(work_dir=osp.join(work_dir, 'recal')))
    cfg = Config.fromfile(config)
    cfg.work_dir = osp.join(work_dir, 'test')
    cfg.load_from = recal
    metrics = Runner.from_cfg(cfg).test()
    with open(out, 'w') as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f)


def _mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def table(results: List[dict], command: str, setup: str) -> str:
    """Markdown table: one row per variant (and recalibration), in the given order."""
    rows, order = {}, []
    for r in results:
        if r['variant'] not in rows:
            order.append(r['variant'])
        rows.setdefault(r['variant'], []).append(r)
    lines = [f'`{command}`', '', setup, '',
             '| variant | ends foldable | box AP | mask AP | s/iter | seeds |',
             '|---|---|---|---|---|---|']
    for name in order:
        rs = rows[name]
        base = name.split('+recal')[0]
        label = VARIANTS[base]['label']
        if '+recal' in name:
            label += f' + BN recalibration over {rs[0]["recal_iters"]} batches'
        fold = 'yes' if VARIANTS[base]['foldable'] and all(
            (r['final_lam'] or 0.0) == 0.0 for r in rs) else 'no'
        s_iter = '—' if '+recal' in name else f'{min(r["s_per_iter"] for r in rs):.2f}'
        lines.append(f'| {label} | {fold} | {_mean_std([r["bbox_mAP"] for r in rs])} | '
                     f'{_mean_std([r["segm_mAP"] for r in rs])} | {s_iter} | '
                     f'{", ".join(str(r["seed"]) for r in rs)} |')
    return '\n'.join(lines) + '\n'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmslab.validation import argparse_int
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/prepbn_study')
    p.add_argument('--variants', nargs='+', choices=sorted(VARIANTS),
                   default=list(DEFAULT_VARIANTS))
    p.add_argument('--seeds', nargs='+', type=argparse_int(min=0), default=[0, 1, 2])
    p.add_argument('--iters', type=argparse_int(min=10), default=300,
                   help='training iterations per run')
    p.add_argument('--image-size', type=argparse_int(min=32), default=128)
    p.add_argument('--num-train', type=argparse_int(min=1), default=200)
    p.add_argument('--num-val', type=argparse_int(min=1), default=50)
    p.add_argument('--batch-size', type=argparse_int(min=1), default=4)
    p.add_argument('--threads', type=argparse_int(min=1), default=1,
                   help='torch threads of every training subprocess')
    p.add_argument('--recal-iters', nargs='*', type=argparse_int(min=1), default=[100],
                   help='BN recalibration batches (none: no recalibration)')
    p.add_argument('--recal-variants', nargs='*', choices=sorted(VARIANTS),
                   default=list(DEFAULT_RECAL_VARIANTS))
    p.add_argument('--out', default=None, help='markdown table (default: <work-dir>/table.md)')
    p.add_argument('--force', action='store_true', help='redo finished runs')
    p.add_argument('--table-only', action='store_true',
                   help='train nothing: the table of every finished run of --variants (all '
                        'seeds found) and of their recalibrations')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    work_root = osp.abspath(args.work_dir)
    os.makedirs(work_root, exist_ok=True)
    data_root = make_data(osp.join(work_root, 'data'), args.num_train, args.num_val,
                          args.image_size)
    if args.table_only:
        results = finished_results(work_root, args.variants, args.recal_variants)
    else:
        results = run_study(work_root, data_root, args)
    command = 'python tools/prepbn_study.py ' + ' '.join(argv if argv is not None
                                                          else sys.argv[1:])
    setup = (f'Mask R-CNN from scratch on the synthetic shapes set ({args.num_train} train / '
             f'{args.num_val} val images, {args.image_size} px), {args.iters} iterations of '
             f'batch {args.batch_size}, AdamW 1e-3 with {max(1, args.iters // 10)} warmup '
             'iterations and cosine decay; the demo\'s narrow SLAB-PVT (embed_dims '
             '[32, 64, 128, 256], depths [1, 1, 2, 1]) and heads with 64 sampled anchors / RoIs '
             'and 100 proposals per image; box / mask AP on the val '
             'split, mean ± sample std over the seeds; s/iter: training time per iteration '
             f'({args.threads} thread(s) per run) of the fastest seed (the machine was shared: '
             'other seeds ran under load).')
    text = table(results, command.strip(), setup)
    out = args.out or osp.join(work_root, 'table.md')
    with open(out, 'w') as f:
        f.write(text)
    with open(osp.join(work_root, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    print(text)
    return text


def finished_results(work_root: str, variants: Sequence[str],
                     recal_variants: Sequence[str]) -> List[dict]:
    """The results of every finished run of ``variants`` (any seed; then the BN
    recalibrations of ``recal_variants``) found under ``work_root``, no training."""
    def load(pattern: str) -> List[dict]:
        out = []
        for path in glob.glob(osp.join(work_root, 'runs', pattern, 'result.json')):
            with open(path) as f:
                out.append(json.load(f))
        return sorted(out, key=lambda r: (r.get('recal_iters', 0), r['seed']))

    results = [r for v in variants for r in load(f'{v}_s*')]
    results += [r for v in recal_variants if v in variants
                for r in load(osp.join(f'{v}_s*', 'recal*'))]
    if not results:
        raise RuntimeError(f'no finished run of {list(variants)} under {work_root}/runs')
    return results


def run_study(work_root: str, data_root: str, args) -> List[dict]:
    """Train every variant x seed (and the BN recalibrations) that has no result yet."""
    results = []
    # seed-major: an interrupted study has every variant at the first seeds
    for seed, variant in [(s, v) for s in args.seeds for v in args.variants]:
        r = train_one(work_root, variant, seed, data_root, args)
        print(f'[prepbn_study] {variant} seed {seed}: box {r["bbox_mAP"]:.3f} mask '
              f'{r["segm_mAP"]:.3f} {r["s_per_iter"]:.2f} s/iter ({r["wall_s"]:.0f} s)',
              flush=True)
        results.append(r)
    for variant in args.recal_variants:
        if variant not in args.variants:
            continue
        for iters in args.recal_iters:
            for base in [r for r in results if r['variant'] == variant]:
                r = recal_one(work_root, base, iters, args)
                print(f'[prepbn_study] {r["variant"]} seed {r["seed"]}: box '
                      f'{r["bbox_mAP"]:.3f} mask {r["segm_mAP"]:.3f} ({r["wall_s"]:.0f} s)',
                      flush=True)
                results.append(r)
    return results
