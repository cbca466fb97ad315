"""End to end (slow, CI): SLAB-Swin and SLAB-PVT image classifiers through mmpretrain's
real tool chain, on the synthetic ImageNet-layout set (:func:`mmslab.datasets.
make_imagenet_folders`: 4 shape classes, 64 px).

The configs are configs/cls/slab_swin_tiny.py and slab_pvt_tiny.py (``_base_``) with only
the widths and depths (tests/_mini.py's minis, SLAB-Swin's with one block per stage: at
64 px every window covers its whole map, so no block is shifted), the data (the synthetic set, load / resize
/ pack, no Mixup / CutMix: ``model.train_cfg=None``), the schedule length and the
PRepBNHook's iterations (LayerNorm -> RepBN over the first half) overridden. One module
fixture runs every process, overlapping the independent ones (one thread each):

* `mim train mmpretrain` of SLAB-Swin from scratch, and of SLAB-PVT mmpretrain's
  ``tools/train.py`` itself, the command `mim train` starts (`mim train` also runs
  ``train.py -h`` first, to read its options: an interpreter that imports torch and
  mmengine, ~5 s of a core, spared where `mim` itself is not what is tested);
* SLAB-PVT (the cheaper) once more, SIGKILLed after a checkpoint and continued with
  ``--resume``; it must end bit for bit where the uninterrupted run ended;
* `mim test mmpretrain` of the SLAB-Swin checkpoint.

The tests then check top-1 well above chance (printed), the exact resume, that `mim test`
reproduces the last validation, the fold of both classifiers (what ``tools/deploy.py``
runs, :func:`mmslab.deploy.deploy_checkpoint`, in this process: logits, predictions and
top-1 unchanged) and the folded classifiers' logits in ONNX Runtime (TorchScript
exporter). Nothing is mocked.
"""
import copy
import io
import os
import os.path as osp
import resource
import sys
import time

import pytest
import torch
import torch.nn as nn
from _e2e import Background, codebase_script, json_runs, load_ckpt, write_config
from _mini import mini_kwargs
from _tolerance import EXACT, assert_rel_close, float32_tol
from mmengine.config import Config

from mmslab.datasets import imagenet_classes, make_imagenet_folders
from mmslab.models import reparameterize

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
IMAGE_SIZE = 64
CLASSES = imagenet_classes(4)
TRAIN_PER_CLASS, VAL_PER_CLASS = 24, 16
BATCH = 8
ITERS_PER_EPOCH = len(CLASSES) * TRAIN_PER_CLASS // BATCH  # 12
EPOCHS = 4
ITERS = EPOCHS * ITERS_PER_EPOCH  # 48
DECAY = ITERS // 2  # PRepBNHook: LayerNorm -> RepBN over the first half
CKPT_EPOCHS = 2  # SLAB-PVT checkpoints every 2 epochs (the kill and resume)
KILL_AT = (CKPT_EPOCHS + 1, 4)  # SIGKILL after this (epoch, iteration) is logged
MIN_TOP1 = 60.0  # %, chance is 25
ENV = dict(OMP_NUM_THREADS='1')  # the same reductions in every run; overlapping runs

MODELS = {
    'slab_swin': dict(config='slab_swin_tiny.py', channels=128,  # one block per stage
                      backbone=mini_kwargs('slab_swin', depths=[1, 1, 1, 1]),
                      ckpt_epochs=EPOCHS),
    'slab_pvt': dict(config='slab_pvt_tiny.py', channels=64,
                     backbone=mini_kwargs('slab_pvt'), ckpt_epochs=CKPT_EPOCHS),
}

BODY = """
model = dict(backbone=dict(pretrain_img_size=image_size, **backbone),
             head=dict(num_classes=len(classes), in_channels=channels),
             train_cfg=None)  # no Mixup / CutMix
data_preprocessor = dict(num_classes=len(classes))
pipeline = [dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(image_size, image_size)),
            dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=batch, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, split='train', metainfo=dict(classes=classes),
                 pipeline=pipeline))
val_dataloader = dict(
    batch_size=2 * batch, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, split='val', metainfo=dict(classes=classes),
                 pipeline=pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
custom_hooks = [
    dict(type='ReleaseCheckpointHook'),
    dict(type='PRepBNHook', r0=1.0, warmup_iters=0, decay_iters=decay_iters),
]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=ckpt_epochs, max_keep_ckpts=-1))
randomness = dict(seed=0)
"""


def lam(i: int) -> float:
    """PRepBNHook(r0=1, decay_iters=DECAY) at 0-based iteration ``i``."""
    return max(0.0, 1.0 - i / DECAY)


def mim(*args):
    return [sys.executable, '-m', 'mim', *args]


def train_py(*args):
    """mmpretrain's ``tools/train.py`` as `mim train` runs it (where mim finds it)."""
    return [sys.executable, codebase_script('mmpretrain', 'train'), *args,
            '--launcher', 'none']


@pytest.fixture(scope='module')
def cls_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp('e2e_cls')
    data = str(work / 'imagenet')
    make_imagenet_folders(data, num_classes=len(CLASSES), train_per_class=TRAIN_PER_CLASS,
                          val_per_class=VAL_PER_CLASS, image_size=IMAGE_SIZE, seed=0)
    cfg = {name: write_config(
        str(work / f'{name}_cls_mini.py'), osp.join(ROOT, 'configs', 'cls', m['config']), BODY,
        data_root=data, classes=CLASSES, image_size=IMAGE_SIZE, batch=BATCH,
        max_epochs=EPOCHS, decay_iters=DECAY, ckpt_epochs=m['ckpt_epochs'],
        backbone=m['backbone'], channels=m['channels']) for name, m in MODELS.items()}
    wd = {k: str(work / k) for k in ('slab_swin', 'slab_pvt', 'pvt_killed', 'swin_test')}
    t0, running = time.time(), []

    def start(log, cmd):
        running.append(Background(cmd, str(work / f'{log}.log'), env=ENV))
        return running[-1]

    try:
        swin = start('train_swin', mim('train', 'mmpretrain', cfg['slab_swin'], '--work-dir',
                                       wd['slab_swin']))
        pvt = start('train_pvt', train_py(cfg['slab_pvt'], '--work-dir', wd['slab_pvt']))
        killed = start('pvt_killed', train_py(cfg['slab_pvt'], '--work-dir', wd['pvt_killed']))
        killed_out = killed.kill_when(r'Epoch\(train\)\s*\[%d\]\[\s*%d/' % KILL_AT)
        with open(osp.join(wd['pvt_killed'], 'last_checkpoint')) as f:
            killed_at = dict(last_checkpoint=f.read().strip(),
                             files=sorted(os.listdir(wd['pvt_killed'])))
        resumed = start('pvt_resumed', train_py(cfg['slab_pvt'], '--work-dir',
                                                wd['pvt_killed'], '--resume'))
        swin.wait()
        ckpt = {name: osp.join(wd[name], f'epoch_{EPOCHS}.pth') for name in MODELS}
        tested = start('test_swin', mim('test', 'mmpretrain', cfg['slab_swin'], '--checkpoint',
                                        ckpt['slab_swin'], '--work-dir', wd['swin_test']))
        pvt.wait()
        resumed_out, _ = resumed.wait()
        tested_out, _ = tested.wait()
    finally:
        for proc in running:
            proc.stop()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f'e2e_cls: {len(running)} processes in {time.time() - t0:.1f} s (wall), '
          f'{usage.ru_utime + usage.ru_stime:.1f} s of CPU (all children of this process)')
    # the configs as the runs dumped them (one file each: parsing the originals reads
    # every mmpretrain metafile for each `mmpretrain::` base)
    dumped = {name: osp.join(wd[name], osp.basename(cfg[name])) for name in MODELS}
    return dict(work=work, data=data, cfg=cfg, dumped=dumped, wd=wd, ckpt=ckpt,
                killed_out=killed_out, killed_at=killed_at, resumed_out=resumed_out,
                tested_out=tested_out)


def train_records(records):
    return [r for r in records if 'loss' in r]


def val_top1(records):
    """{epoch: top-1} of a run's validations."""
    return {r['step']: r['accuracy/top1'] for r in records if 'accuracy/top1' in r}


def run_records(cls_runs, name):
    """The json log records of the uninterrupted training run of ``name``."""
    (records, ) = json_runs(cls_runs['wd'][name])
    return records


@pytest.mark.slow
@pytest.mark.parametrize('name', list(MODELS))
def test_mim_train_classifier_learns(cls_runs, name):
    """Training from scratch with the PRepBN schedule: every iteration logged
    with lam decaying from 1 (LayerNorm) to 0 (RepBN) over the first half, and top-1 well
    above chance after 48 iterations; the checkpoint holds converged (lam = 0) PRepBNs."""
    records = run_records(cls_runs, name)
    train = train_records(records)
    assert [r['iter'] for r in train] == list(range(1, ITERS + 1))
    assert [r['prepbn_lam'] for r in train] == pytest.approx(
        [lam(i) for i in range(ITERS)], abs=1e-6)
    top1 = val_top1(records)
    assert list(top1) == [EPOCHS]
    print(f'{name}: top-1 {top1[EPOCHS]:.2f} % ({len(CLASSES)} classes, '
          f'{len(CLASSES) * VAL_PER_CLASS} val images, {ITERS} iterations)')
    assert top1[EPOCHS] >= MIN_TOP1, top1
    ckpt = load_ckpt(cls_runs['ckpt'][name])
    assert ckpt['meta']['epoch'] == EPOCHS and ckpt['meta']['iter'] == ITERS
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == CLASSES
    lams = [v for k, v in ckpt['state_dict'].items() if k.endswith('.lam')]
    assert lams and all(float(v) == 0.0 for v in lams)
    if name == 'slab_swin':  # the final PRepBN of the classification model
        assert 'backbone.norm.lam' in ckpt['state_dict']


@pytest.mark.slow
def test_sigkill_and_resume_slab_pvt_is_the_uninterrupted_run(cls_runs):
    """SLAB-PVT SIGKILLed in epoch 3 (checkpoint of epoch 2 written) and resumed with
    ``--resume`` ends exactly where the uninterrupted run ends: the lam / loss /
    lr trajectory, the validation top-1, the weights (lam buffers, RepBN statistics) and
    the AdamW state, bit for bit."""
    wd = cls_runs['wd']
    resumed_from = CKPT_EPOCHS * ITERS_PER_EPOCH
    assert 'Saving checkpoint at %d epochs' % CKPT_EPOCHS in cls_runs['killed_out']
    killed_at = cls_runs['killed_at']  # what the kill left
    assert killed_at['last_checkpoint'] == osp.join(wd['pvt_killed'], f'epoch_{CKPT_EPOCHS}.pth')
    assert [f for f in killed_at['files'] if f.endswith('.pth')] == [f'epoch_{CKPT_EPOCHS}.pth']
    assert f'resumed epoch: {CKPT_EPOCHS}, iter: {resumed_from}' in cls_runs['resumed_out']
    killed, resumed = json_runs(wd['pvt_killed'])  # a run directory each
    killed, resumed = train_records(killed), [r for r in resumed if 'accuracy/top1' not in r]
    assert max(r['iter'] for r in killed) > resumed_from  # the kill threw iterations away
    assert [r['iter'] for r in resumed] == list(range(resumed_from + 1, ITERS + 1))
    got = {r['iter']: r for r in killed if r['iter'] <= resumed_from}
    got.update({r['iter']: r for r in resumed})
    ref = run_records(cls_runs, 'slab_pvt')
    want = {r['iter']: r for r in train_records(ref)}
    assert sorted(got) == sorted(want) == list(range(1, ITERS + 1))
    for key in ('prepbn_lam', 'loss', 'lr'):
        assert [got[i][key] for i in want] == [want[i][key] for i in want], key
    for r in killed:  # the iterations the kill threw away were redone identically
        assert r['loss'] == want[r['iter']]['loss'], r
    assert val_top1(json_runs(wd['pvt_killed'])[1]) == val_top1(ref)

    a = load_ckpt(cls_runs['ckpt']['slab_pvt'])
    b = load_ckpt(osp.join(wd['pvt_killed'], f'epoch_{EPOCHS}.pth'))
    assert a['meta']['iter'] == b['meta']['iter'] == ITERS
    assert list(a['state_dict']) == list(b['state_dict'])
    assert any('.bn.running_var' in k for k in b['state_dict'])  # RepBN statistics
    for k, v in a['state_dict'].items():
        assert torch.equal(v, b['state_dict'][k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert sa.keys() == sb.keys() and sa
    for k in sa:
        for field in ('step', 'exp_avg', 'exp_avg_sq'):
            assert torch.equal(torch.as_tensor(sa[k][field]), torch.as_tensor(sb[k][field]))


@pytest.mark.slow
def test_mim_test_reproduces_last_validation(cls_runs):
    """`mim test mmpretrain CONFIG --checkpoint` of the SLAB-Swin run (through the config's
    ReleaseCheckpointHook) gives the top-1 that the run's last validation logged."""
    out = cls_runs['tested_out']
    assert 'ReleaseCheckpointHook: ' in out and 'fit the model' in out
    (records, ) = json_runs(cls_runs['wd']['swin_test'])
    logged = val_top1(run_records(cls_runs, 'slab_swin'))[EPOCHS]
    assert records[-1]['accuracy/top1'] == pytest.approx(logged, abs=1e-9)


# ------------------------------------------------------------------ in this process
class Logits(nn.Module):
    """The whole classifier on preprocessed images: its logits (``mode='tensor'``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, mode='tensor')


def build_classifier(cfg, checkpoint):
    """The classifier of ``cfg`` (a Config; with its data preprocessor, as mmengine's
    Runner builds it) with ``checkpoint`` loaded strictly, in eval mode."""
    from mmslab.checkpoint_io import load_model_weights, read_checkpoint
    from mmslab.deploy import build_model_from_config
    model = build_model_from_config(cfg)  # with the data preprocessor, as the Runner
    load_model_weights(model, read_checkpoint(checkpoint, map_location='cpu'), strict=True,
                       source=checkpoint)
    return model.eval()


@pytest.fixture(scope='module')
def deployed(cls_runs):
    """``deployed(name)``: :func:`mmslab.deploy.deploy_checkpoint` (what `tools/deploy.py`
    runs) on the training run's checkpoint and config, the trained and the folded
    classifier, and the preprocessed validation images with their labels. Made once per
    model."""
    from mmengine.runner import Runner

    from mmslab.deploy import deploy_checkpoint
    cache = {}

    def get(name):
        if name not in cache:
            cfg = Config.fromfile(cls_runs['dumped'][name])
            folded_file = str(cls_runs['work'] / 'deploy' / f'{name}_folded.pth')
            err = deploy_checkpoint(cfg, cls_runs['ckpt'][name], folded_file,
                                    img_shape=(IMAGE_SIZE, IMAGE_SIZE))
            folded_cfg = Config.fromfile(folded_file[:-len('.pth')] + '_config.py')
            trained = build_classifier(cfg, cls_runs['ckpt'][name])
            folded = build_classifier(folded_cfg, folded_file)
            inputs, labels = [], []
            for batch in Runner.build_dataloader(folded_cfg.test_dataloader):
                data = trained.data_preprocessor(batch, False)
                inputs.append(data['inputs'])
                labels.append(torch.cat([s.gt_label for s in data['data_samples']]))
            cache[name] = dict(trained=trained, folded=folded, folded_cfg=folded_cfg,
                               fold_error=err, inputs=torch.cat(inputs),
                               labels=torch.cat(labels))
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize('name', list(MODELS))
@torch.no_grad()
def test_deploy_folded_classifier_same_logits_and_top1(cls_runs, deployed, name):
    """The deploy fold (`tools/deploy.py`'s :func:`~mmslab.deploy.deploy_checkpoint`) of a
    trained classifier of an mmpretrain config: the written config builds the folded
    structure, which loads the folded file strictly; its logits on the validation images
    are the trained classifier's (the fold in float64: to EXACT; the deployed float32 file:
    to float32 rounding), with the same predictions and the top-1 the run logged."""
    d = deployed(name)
    assert d['fold_error'] <= 1e-5  # deploy's own check: float64 features, float32 weights
    assert d['folded_cfg'].model.backbone.deploy is True
    state = d['folded'].state_dict()
    assert not any(k.endswith('.lam') or '.bn.' in k for k in state)  # no PRepBN left
    x, labels = d['inputs'], d['labels']
    assert len(x) == len(CLASSES) * VAL_PER_CLASS and tuple(x.shape[2:]) == (IMAGE_SIZE, ) * 2
    trained, folded = Logits(d['trained']), Logits(d['folded'])
    # the fold is exact: the trained classifier folded in float64 (8 images: float64
    # depthwise convs are slow)
    t64 = copy.deepcopy(trained).double()
    f64 = copy.deepcopy(t64)
    reparameterize(f64)
    x64 = x[::len(x) // 8].double()
    assert_rel_close(f64(x64), t64(x64), EXACT, 'float64 fold')
    # the deployed file (float32 weights, rounded after the fold), evaluated in float32:
    # up to float32 rounding through the minis' reductions (the longest: the last stage's
    # MLP, 4 x its channels) over three chained layers
    before, after = trained(x), folded(x)
    tol = float32_tol(4 * MODELS[name]['channels'], layers=3)
    assert_rel_close(after, before, tol, 'float32 logits')
    assert torch.equal(after.argmax(1), before.argmax(1))
    top1 = 100.0 * (after.argmax(1) == labels).float().mean().item()
    logged = val_top1(run_records(cls_runs, name))[EPOCHS]
    assert top1 == pytest.approx(logged, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('name', list(MODELS))
@torch.no_grad()
def test_onnx_runtime_folded_classifier(deployed, name):
    """The folded classifier's logits exported with the TorchScript exporter (dynamic
    batch / height / width) match PyTorch in ONNX Runtime within mmslab.onnx_export.RTOL
    at the validation images and at other sizes, with the same predictions."""
    from mmslab.onnx_export import RTOL, compare_with_torch, ort_session
    from mmslab.onnx_exporters import torchscript_export_kwargs
    d = deployed(name)
    model = Logits(d['folded']).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (d['inputs'][:2], ), buf, opset_version=17,
                      input_names=['input'], output_names=['logits'],
                      dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                                    'logits': {0: 'batch'}},
                      do_constant_folding=True, **torchscript_export_kwargs())
    session = ort_session(buf.getvalue())
    checks = compare_with_torch(session, model, [(3, 3, 96, 80)])  # another size
    for c in checks:
        assert c.shapes_match and c.max_rel_error <= RTOL, c
    x = d['inputs']
    ort = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
    ref = model(x)
    assert_rel_close(ort, ref, RTOL, 'ONNX Runtime logits')
    assert torch.equal(ort.argmax(1), ref.argmax(1))


DETECTORS = {'slab_swin': 'mask_rcnn_slab_swin_t_1x.py', 'slab_pvt': 'mask_rcnn_slab_pvt.py'}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(MODELS))
def test_trained_classifier_initialises_the_detectors_backbone(cls_runs, name):
    """Pretraining to detection: the mmpretrain training checkpoint of each classifier
    initialises the backbone of the repository's Mask R-CNN config through its
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``: every
    backbone weight the detector has is the classifier's (the classifier's final PRepBN,
    which the detection backbone does not have, is left out)."""
    from mmslab.deploy import build_model_from_config
    ckpt = cls_runs['ckpt'][name]
    cfg = Config.fromfile(osp.join(ROOT, 'configs', DETECTORS[name]))
    cfg.model.backbone.update(MODELS[name]['backbone'], pretrain_img_size=IMAGE_SIZE,
                              init_cfg=dict(type='Pretrained', checkpoint=ckpt,
                                            prefix='backbone.'))
    from _mini import mini_backbone
    cfg.model.neck.in_channels = [c for c, _ in mini_backbone(
        name, **MODELS[name]['backbone']).feature_shapes(64, 64)]
    detector = build_model_from_config(cfg)
    detector.init_weights()
    trained = {k[len('backbone.'):]: v for k, v in load_ckpt(ckpt)['state_dict'].items()
               if k.startswith('backbone.')}
    got = detector.backbone.state_dict()
    # all but SLAB-Swin's final PRepBN; the detector's own output LayerNorms are new
    assert {k for k in trained if k not in got} <= {k for k in trained if k.startswith('norm.')}
    # at 64 px the classifier's SLAB-Swin windows are clamped to the maps (16 / 8 / 4 / 2),
    # the detector's are 56 / 28 / 7 / 7: those tables are resized, as a release file's
    resized = [k for k in got if k in trained and got[k].shape != trained[k].shape]
    assert all(k.endswith(('positional_encoding', 'relative_position_bias_table'))
               for k in resized), resized
    assert not resized or name == 'slab_swin'
    shared = [k for k in got if k in trained and k not in resized]
    assert len(shared) > 0.9 * len(trained)
    for k in shared:
        assert torch.equal(got[k], trained[k].to(got[k].dtype)), k
