"""Fine-tuning from LayerNorm weights: LayerNorm vs PRepBN (LN -> RepBN over half the run)
in stock OpenMMLab models, on the synthetic sets, several seeds, side by side.

For each model -- mmdet's PVTv2 Mask R-CNN (configs/prepbn/mask_rcnn_pvtv2_b0_prepbn_...)
and mmseg's SegFormer MiT (configs/prepbn/segformer_mit-b0_prepbn_...), narrowed for the
CPU --, the stock LayerNorm model is trained first (``--pretrain-iters``); that file is the
"pretrained" model. Both variants then continue from it (``load_from``; the PRepBN model
loads the LayerNorm entries into its LayerNorm branches, lam = 1) for ``--iters``:

* ``ln``: the stock model, LayerNorm;
* ``prepbn``: the configs/prepbn/ model, PRepBNHook(r0=1, decay_iters=0.5); its RepBN
  branches start as the LayerNorms' BatchNorm twins (mmslab.prepbn.keymap).

Runs are subprocesses with one thread each, ``--jobs`` at a time. Prints a table (mean and
standard deviation over the seeds) and writes it with every run's metrics to
``<work-dir>/finetune_study.{md,json}``.

    python tools/prepbn_finetune_study.py [--seeds 0 1 2] [--iters 200] [--jobs 2]
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PREPBN = osp.join(ROOT, 'configs', 'prepbn')
CLASSES = ('circle', 'square', 'triangle', 'star')  # mmslab.datasets.SHAPE_CLASSES

SCHEDULE = """
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=lr, weight_decay=0.05),
                     clip_grad=dict(max_norm=10.0))
warmup = max(1, max_iters // 10)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup, eta_min_ratio=0.01,
         by_epoch=False, begin=warmup, end=max_iters)]
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
val_dataloader = test_dataloader
val_evaluator = test_evaluator
auto_scale_lr = dict(enable=False)
"""
DET = """
model = dict(
    backbone=dict(embed_dims=16, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8],
                  norm_cfg=norm_cfg, init_cfg=None),
    neck=dict(in_channels=[16, 32, 80, 128], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64,
                       num_classes=len(classes))),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)),
                   rpn_proposal=dict(nms_pre=500, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    # score_thr 0: an early model's low scores still rank (AP needs no threshold)
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100),
                  rcnn=dict(score_thr=0.0, max_per_img=50)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 filter_cfg=dict(filter_empty_gt=True, min_size=0)))
test_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
"""
SEG = """
classes = ('background', ) + classes
metainfo = dict(classes=classes, palette=[(i * 40, 255 - i * 40, 90) for i in range(5)])
crop_size = (image_size, image_size)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(embed_dims=16, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                  norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=64, num_classes=len(classes),
                     norm_cfg=dict(type='BN', requires_grad=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(
    dataset, pipeline=train_pipeline,
    data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    dataset, pipeline=test_pipeline,
    data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
"""
# model -> (configs/prepbn/ file, body, LayerNorm eps, metrics reported, data kind)
MODELS = {
    'pvtv2_mask_rcnn': ('mask_rcnn_pvtv2_b0_prepbn_fpn_1x_coco.py', DET, 1e-6,
                        ('coco/bbox_mAP', 'coco/segm_mAP'), 'coco'),
    'segformer_mit': ('segformer_mit-b0_prepbn_8xb2-160k_ade20k-512x512.py', SEG, 1e-6,
                      ('mIoU', ), 'ade'),
}


def write_run_config(path: str, model: str, variant: str, seed: int, iters: int,
                     data_root: str, image_size: int, lr: float, load_from=None) -> str:
    rel, body, eps, _, _ = MODELS[model]
    norm = 'PRepBN' if variant == 'prepbn' else 'LN'
    hooks = ("custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters=0.5)]"
             if variant == 'prepbn' else 'custom_hooks = []')
    lines = [f'_base_ = [{osp.join(PREPBN, rel)!r}]', f'classes = {CLASSES!r}',
             f'data_root = {data_root!r}', f'image_size = {image_size}', f'lr = {lr!r}',
             f'max_iters = {iters}', f'norm_cfg = dict(type={norm!r}, eps={eps!r})',
             textwrap.dedent(body), SCHEDULE, hooks, f'randomness = dict(seed={seed})',
             f'load_from = {load_from!r}']
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def run_one(cfg_file: str, work_dir: str) -> Dict[str, float]:
    """Train and test one config in this process; write and return the test metrics."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = work_dir
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = {}
    for k, v in runner.test().items():  # (mmseg's values are numpy scalars)
        try:
            metrics[k] = float(v)
        except (TypeError, ValueError):
            pass
    with open(osp.join(work_dir, 'metrics.json'), 'w') as f:
        json.dump(metrics, f)
    return metrics


def _subprocess(cfg_file: str, work_dir: str) -> Dict[str, float]:
    """Run one config in a subprocess; a work dir with its metrics already is kept (a study
    run again goes on where it stopped)."""
    done = osp.join(work_dir, 'metrics.json')
    if osp.isfile(done):
        with open(done) as f:
            metrics = json.load(f)
        if metrics:
            return metrics
    os.makedirs(work_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    with open(osp.join(work_dir, 'run.log'), 'w') as log:
        subprocess.run([sys.executable, __file__, '--one', cfg_file, work_dir], env=env,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(osp.join(work_dir, 'metrics.json')) as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--one', nargs=2, metavar=('CONFIG', 'WORK_DIR'), help=argparse.SUPPRESS)
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--pretrain-iters', type=int, default=300)
    parser.add_argument('--iters', type=int, default=200)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--jobs', type=int, default=2)
    parser.add_argument('--work-dir', default='work_dirs/prepbn_finetune_study')
    args = parser.parse_args(argv)
    if args.one:
        run_one(*args.one)
        return 0
    import mmslab  # noqa: F401
    from mmslab.datasets import make_ade_semantic, make_coco_instances
    os.makedirs(args.work_dir, exist_ok=True)
    roots = {}
    for kind in {MODELS[m][4] for m in args.models}:
        root = osp.abspath(osp.join(args.work_dir, 'data', kind))
        if kind == 'coco':
            make_coco_instances(root, num_train=200, num_val=50, image_size=args.image_size,
                                seed=0)
        else:
            make_ade_semantic(root, num_train=200, num_val=50, image_size=args.image_size,
                              seed=0)
        roots[kind] = root + ('/' if kind == 'coco' else '')
    t0 = time.time()

    def pretrain(model: str) -> str:
        work = osp.abspath(osp.join(args.work_dir, model, 'pretrain_ln'))
        os.makedirs(work, exist_ok=True)
        ckpt = osp.join(work, f'iter_{args.pretrain_iters}.pth')
        cfg = write_run_config(osp.join(work, 'config.py'), model, 'ln', 0,
                               args.pretrain_iters, roots[MODELS[model][4]], args.image_size,
                               args.lr)
        _subprocess(cfg, work)
        return ckpt

    with ThreadPoolExecutor(args.jobs) as pool:
        pretrained = dict(zip(args.models, pool.map(pretrain, args.models)))
        jobs = [(m, v, s) for m in args.models for s in args.seeds for v in ('ln', 'prepbn')]

        def finetune(job) -> Dict[str, float]:
            model, variant, seed = job
            work = osp.abspath(osp.join(args.work_dir, model, f'{variant}_seed{seed}'))
            os.makedirs(work, exist_ok=True)
            cfg = write_run_config(osp.join(work, 'config.py'), model, variant, seed,
                                   args.iters, roots[MODELS[model][4]], args.image_size,
                                   args.lr, load_from=pretrained[model])
            return _subprocess(cfg, work)

        results = list(pool.map(finetune, jobs))
    runs = [dict(model=m, variant=v, seed=s, metrics=r) for (m, v, s), r in zip(jobs, results)]
    lines = ['| model | metric | LayerNorm (a) | PRepBN LN -> RepBN (b) | (b) - (a) | '
             'within 1 std of (a) |', '|---|---|---|---|---|---|']
    for model in args.models:
        for key in MODELS[model][3]:
            vals = {v: [r['metrics'][key] for r in runs if r['model'] == model
                        and r['variant'] == v] for v in ('ln', 'prepbn')}
            mean = {v: statistics.mean(x) for v, x in vals.items()}
            std = {v: statistics.stdev(x) if len(x) > 1 else 0.0 for v, x in vals.items()}
            diff = mean['prepbn'] - mean['ln']
            lines.append(f"| {model} | {key} | {mean['ln']:.3f} ± {std['ln']:.3f} | "
                         f"{mean['prepbn']:.3f} ± {std['prepbn']:.3f} | {diff:+.3f} | "
                         f"{'yes' if abs(diff) <= std['ln'] else 'no'} |")
    note = (f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); pretrain "
            f'{args.pretrain_iters} iterations with LayerNorm, then {args.iters} from it; '
            f'AdamW lr {args.lr:g}, cosine; {args.image_size} px synthetic sets (200 train / '
            f'50 val); {args.jobs} runs at a time, 1 thread each ({time.time() - t0:.0f} s in '
            'this call; runs finished earlier are kept). Mean ± sample std over the seeds.')
    text = '\n'.join(lines) + '\n\n' + note + '\n'
    print(text)
    with open(osp.join(args.work_dir, 'finetune_study.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.work_dir, 'finetune_study.json'), 'w') as f:
        json.dump(dict(args=vars(args), runs=runs), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
