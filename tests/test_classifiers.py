"""SLAB-PVT / SLAB-Swin / the DeiT family (DeiT-PRepBN, DeiT-RepBN, SLAB-DeiT) as the
backbones of mmpretrain ``ImageClassifier``s (docs/classification.md): the release's
classification files loaded as they are (``ReleaseCheckpointHook``,
``tools/convert_checkpoint.py --classifier``), whole-classifier logits against the
release, the folded classifier, the refusals, SLAB-Swin's classification windows and the
PRepBN schedule of an EMA model (the configs/cls/ configs themselves: tests/test_configs.py)."""
import copy
import functools
import hashlib
import os.path as osp
import uuid
from collections import OrderedDict

import pytest
import torch
from PIL import Image
from _e2e import mim
from _tolerance import EXACT, assert_rel_close, float32_tol, rel_error
from _toy import toy_runner_cfg
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner

import mmslab  # noqa: F401  (registers the SLAB modules and hooks)
from mmslab.models import cpu_inference, reparameterize
from mmslab.models.classifier_conversion import classifier_state_dict
from mmslab.prepbn import PRepBN, RepBN

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs', 'cls')
CLS_DATA = osp.join(ROOT, 'tests', 'data', 'cls')
VECTORS = osp.join(ROOT, 'tests', 'data', 'reference', 'vectors')

# The vectors' minis (the release classes' kwargs of the reference manifests) as
# structural overrides of the configs' backbones, heads of the file's class count (PVT /
# Swin: 1000 as released; the DeiT minis of tests/data/cls: 10), each built from the
# config of the released model whose layout it has.
DEIT_MINI = dict(embed_dims=48, depth=2, num_heads=3)
MINIS = {
    'slab_pvt_mini': dict(config='slab_pvt_tiny.py', channels=64, classes=1000, arch=dict(
        embed_dims=[16, 32, 40, 64], num_heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4],
        depths=[2, 1, 1, 1])),
    'slab_swin_mini': dict(config='slab_swin_tiny.py', channels=256, classes=1000, arch=dict(
        embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])),
    # SLAB-DeiT (SLA, LinearNorm), DeiT-PRepBN (softmax, LinearNorm: the release's DeiT-S),
    # DeiT-RepBN (softmax, RepBN: the release's DeiT-T)
    'slab_deit_mini': dict(config='slab_deit_tiny.py', channels=48, classes=10, arch=DEIT_MINI),
    'deit_prepbn_mini': dict(config='deit_small_prepbn.py', channels=48, classes=10,
                             arch=DEIT_MINI),
    'deit_repbn_mini': dict(config='deit_tiny_prepbn.py', channels=48, classes=10,
                            arch=DEIT_MINI),
}
DEIT = ('slab_deit_mini', 'deit_prepbn_mini', 'deit_repbn_mini')
# the release's logits: SLAB-Swin's and the DeiT minis' vectors as made by the reference
# set; SLAB-PVT's made again with the release's own class (docs/classification.md,
# "Conformance": the reference set's PVT logits do not come from the mini's weights)
LOGITS = {'slab_pvt_mini': 'slab_pvt_mini_release_logits_224x224.pt',
          'slab_swin_mini': 'slab_swin_mini_logits_224x224.pt',
          **{name: f'{name}_logits_224x224.pt' for name in DEIT}}
# float32 against the float64 release, relative to the largest logit: rounding through
# the minis (reductions <= 256 terms: the heads' inputs, the widest stages) over three
# chained layers of reductions; <= 1e-4. The DeiT minis (768-term sums of the patch conv,
# two blocks: float32_tol(768, layers=2) = 1.1e-4, no tighter) are held to it too
# (measured <= 3.1e-7).
F32_TOL = float32_tol(256, layers=3)
assert F32_TOL <= 1e-4


def _digest(state_dict):
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(f'{k}|{v.dtype}|{tuple(v.shape)}|'.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def release_state_dict(name):
    """The release's classification state dict of a mini, exactly (key order, dtypes,
    values; checked by digest): the backbone entries of tests/data/reference/vectors/
    <name>_official.pth plus the entries trimmed from it (head, final norm, PRepBN
    counters, cached masks), kept in tests/data/cls/<name>_official_rest.pth; a DeiT mini's
    tests/data/cls/<name>_official.pth as it is."""
    if name in DEIT:
        return torch.load(osp.join(CLS_DATA, f'{name}_official.pth'), weights_only=True)['model']
    trimmed = torch.load(osp.join(VECTORS, f'{name}_official.pth'), weights_only=True)['model']
    rest = torch.load(osp.join(CLS_DATA, f'{name}_official_rest.pth'), weights_only=True)
    both = {**trimmed, **rest['entries']}
    sd = OrderedDict((k, both[k]) for k in rest['order'])
    assert _digest(sd) == rest['sha256']
    return sd


@pytest.fixture(scope='module')
def release_file(tmp_path_factory):
    cache = {}

    def get(name):
        if name in DEIT:  # the file as the reference set has it
            return osp.join(CLS_DATA, f'{name}_official.pth')
        if name not in cache:
            path = tmp_path_factory.mktemp('release') / f'{name}_official.pth'
            torch.save({'model': release_state_dict(name)}, path)
            cache[name] = str(path)
        return cache[name]

    return get


@functools.lru_cache(maxsize=None)
def load_config(name):
    """configs/cls/<name>, parsed once (the tests read it; what they change is a copy)."""
    return Config.fromfile(osp.join(CONFIGS, name))


def classifier_cfg(name, **head):
    """The model of the mini's configs/cls config, its backbone narrowed to the mini."""
    spec = MINIS[name]
    model = copy.deepcopy(load_config(spec['config']).model.to_dict())
    model['backbone']['arch'] = copy.deepcopy(spec['arch'])
    model['head'].update(dict(in_channels=spec['channels'], num_classes=spec['classes']),
                         **head)
    return model


def make_runner(work_dir, model, hooks=(dict(type='ReleaseCheckpointHook'), ), **kwargs):
    return Runner(model=model, work_dir=str(work_dir), default_scope='mmpretrain',
                  experiment_name=f'cls_{uuid.uuid4().hex}', custom_hooks=list(hooks),
                  **kwargs)


def load_through_runner(work_dir, model_cfg, checkpoint, **hook):
    """``load_from`` as ``mim test --checkpoint`` sets it, loaded by the runner
    (``load_or_resume``, what ``runner.test()`` runs first) with the configs'
    ReleaseCheckpointHook; returns the runner."""
    runner = make_runner(work_dir, model_cfg, hooks=[dict(type='ReleaseCheckpointHook', **hook)],
                         load_from=checkpoint)
    runner.load_or_resume()
    return runner


@pytest.fixture(scope='module')
def loaded(tmp_path_factory, release_file):
    """The mini classifiers, built from their config and loaded from the release file."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_through_runner(tmp_path_factory.mktemp('run'),
                                              classifier_cfg(name), release_file(name)).model.eval()
        return copy.deepcopy(cache[name])

    return get


def logits(model, x, dtype, cpu_path=False):
    with torch.no_grad(), cpu_inference.enabled(cpu_path):
        return model.to(dtype)(x.to(dtype), mode='tensor')


# ------------------------------------------------------------------ conformance


@pytest.mark.parametrize('name', sorted(MINIS))
@pytest.mark.parametrize('dtype,tol', [(torch.float64, EXACT), (torch.float32, F32_TOL)])
def test_release_logits(name, dtype, tol, loaded):
    """The release file through the configs' ReleaseCheckpointHook: the classifier's
    logits are the release's, in both model forms (the CPU inference path and not)."""
    model = loaded(name)
    x = torch.load(osp.join(CLS_DATA, f'{name}_logits_224x224.pt'), weights_only=True)['input']
    ref = torch.load(osp.join(CLS_DATA, LOGITS[name]), weights_only=True)['logits']
    for cpu_path in (True, False):
        out = logits(model, x, dtype, cpu_path)
        assert out.dtype == dtype and out.shape == ref.shape == (2, MINIS[name]['classes'])
        assert_rel_close(out, ref, tol, msg=f'{name} {dtype} cpu_path={cpu_path}')


@pytest.mark.parametrize('name', sorted(MINIS))
def test_folded_classifier_equals_the_trained_one(name, loaded, tmp_path):
    """reparameterize() folds the whole classifier (SLAB-Swin's and the DeiT family's
    final norm into its affine map) exactly; the folded config (backbone deploy=True)
    loads the folded weights strictly and gives the same logits."""
    model = loaded(name).double()
    x = torch.load(osp.join(CLS_DATA, f'{name}_logits_224x224.pt'), weights_only=True)['input']
    x = x[:1]  # eval mode: each image's logits are its own
    before = logits(model, x, torch.float64)
    reparameterize(model)
    assert not any(isinstance(m, (PRepBN, RepBN)) and not m.deploy for m in model.modules())
    if name == 'slab_swin_mini' or name in DEIT:
        assert model.backbone.norm.deploy
        assert {'norm.scale', 'norm.shift'} <= set(model.backbone.state_dict())
    assert_rel_close(logits(model, x, torch.float64), before, EXACT)
    cfg = classifier_cfg(name)
    cfg['backbone']['deploy'] = True
    init_default_scope('mmpretrain')
    folded = MODELS.build(cfg).double().eval()
    folded.load_state_dict(model.state_dict(), strict=True)
    assert_rel_close(logits(folded, x, torch.float64), before, EXACT)


def test_the_release_layout_converts_to_the_classifier_names():
    sd = release_state_dict('slab_swin_mini')
    init_default_scope('mmpretrain')
    model = MODELS.build(classifier_cfg('slab_swin_mini'))
    out = classifier_state_dict(model, {'model': sd}, source='mini')
    assert torch.equal(out['head.fc.weight'], sd['head.weight'])
    assert torch.equal(out['backbone.norm.norm2.bn.running_var'], sd['norm.norm2.bn.running_var'])
    assert torch.equal(out['backbone.stages.3.blocks.1.attn.qkv.weight'],
                       sd['layers.3.blocks.1.attn.qkv.weight'])
    # PRepBN counters and cached masks are the release's only; lam (0) is the model's
    assert not any(k.endswith(('.iter', '.total_step', '.warm', 'attn_mask',
                               'relative_position_index', '.lam')) for k in out)
    assert set(out) == {k for k in model.state_dict() if not k.endswith('.lam')}


@pytest.mark.parametrize('name', DEIT)
def test_the_deit_release_layout_converts_to_the_classifier_names(name):
    """The DeiT family: the backbone's own converter (key_conversion.CONVERTERS['deit']),
    ``head.*`` -> ``head.fc.*``; SLAB-DeiT's unused class token and the counters dropped."""
    sd = release_state_dict(name)
    init_default_scope('mmpretrain')
    model = MODELS.build(classifier_cfg(name))
    out = classifier_state_dict(model, {'model': sd}, source='mini')
    assert torch.equal(out['head.fc.weight'], sd['head.weight'])
    assert torch.equal(out['head.fc.bias'], sd['head.bias'])
    assert torch.equal(out['backbone.blocks.1.attn.qkv.weight'], sd['blocks.1.attn.qkv.weight'])
    assert torch.equal(out['backbone.pos_embed'], sd['pos_embed'])
    assert ('backbone.cls_token' in out) is (name != 'slab_deit_mini')
    assert not any(k.endswith(('.iter', '.total_step', '.warm', '.lam')) for k in out)
    assert set(out) == {k for k in model.state_dict() if not k.endswith('.lam')}


# ------------------------------------------------------------------ refusals


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def _refused(tmp_path, model_cfg, checkpoint, *words, **hook):
    runner = make_runner(tmp_path, model_cfg, hooks=[dict(type='ReleaseCheckpointHook', **hook)],
                         load_from=checkpoint)
    before = _state(runner.model)
    with pytest.raises(ValueError) as e:
        runner.load_or_resume()
    for w in words:
        assert w in str(e.value), str(e.value)
    assert _unchanged(runner.model, before), 'a refused checkpoint changed the model'
    return str(e.value)


def test_a_detector_checkpoint_is_refused(tmp_path, loaded):
    """An mmdet checkpoint of the same backbone: refused, not loaded in part."""
    backbone = loaded('slab_pvt_mini').backbone.state_dict()
    det = {'backbone.' + k: v for k, v in backbone.items()}
    det.update({'neck.lateral_convs.0.conv.weight': torch.zeros(256, 16, 1, 1),
                'rpn_head.rpn_conv.weight': torch.zeros(256, 256, 3, 3),
                'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024)})
    path = tmp_path / 'mask_rcnn.pth'
    torch.save({'state_dict': det, 'meta': {}}, path)
    msg = _refused(tmp_path / 'run', classifier_cfg('slab_pvt_mini'), str(path),
                   'detector / segmentor checkpoint', 'neck.*', 'rpn_head.*', 'roi_head.*',
                   'Nothing was loaded', 'missing keys: head.fc.bias, head.fc.weight')
    assert str(path) in msg


# a release file of another backbone family: refused before conversion, with the file's
# family and configs
FAMILY_WORDS = {
    'slab_pvt_mini': ('of the PVT family (SLAB-PVT, PVT-PRepBN; keys blockN.*',
                      'slab_pvt_tiny.py, pvt_tiny_prepbn.py'),
    'slab_swin_mini': ('of the Swin family (SLAB-Swin, Swin-PRepBN; keys layers.N.blocks.*',
                       'slab_swin_tiny.py, slab_swin_small.py'),
    'slab_deit_mini': ('of the DeiT family (DeiT-PRepBN, DeiT-RepBN, SLAB-DeiT; keys '
                       "blocks.N.*, pos_embed, cls_token; this one a SLAB-DeiT (attention='sla'",
                       'slab_deit_tiny.py, slab_deit_small.py'),
}


@pytest.mark.parametrize('model,file', [
    ('slab_swin_mini', 'slab_deit_mini'), ('slab_swin_mini', 'slab_pvt_mini'),
    ('slab_pvt_mini', 'slab_swin_mini'), ('deit_prepbn_mini', 'slab_swin_mini'),
    ('slab_deit_mini', 'slab_pvt_mini')])
def test_a_file_of_another_family_is_refused(tmp_path, release_file, model, file):
    """A DeiT file for a Swin model, a Swin or PVT file for a DeiT one ...: the file's family,
    the model's and the configs that take the file."""
    own = {'slab_swin_mini': 'SLABSwin backbone', 'slab_pvt_mini': 'SLABPVT backbone'}.get(
        model, 'SLABDeiT backbone')
    _refused(tmp_path, classifier_cfg(model), release_file(file), 'release classification file',
             *FAMILY_WORDS[file], own, 'Nothing was loaded')


@pytest.mark.parametrize('model,file,words', [
    # the converter refuses SLAB-DeiT's class-token-free position table
    ('deit_repbn_mini', 'slab_deit_mini',
     ("this classifier a DeiT-RepBN (attention='softmax', norm='RepBN')",
      'has no class-token entry')),
    ('deit_prepbn_mini', 'deit_repbn_mini',
     ("this classifier a DeiT-PRepBN (attention='softmax', norm='PRepBN')",
      'unexpected keys: backbone.blocks.0.norm1.alpha')),
    ('slab_deit_mini', 'deit_prepbn_mini',
     ("this classifier a SLAB-DeiT (attention='sla', norm='PRepBN')",
      'missing keys: backbone.blocks.0.attn.dwc.')),
])
def test_a_deit_file_of_another_model_is_refused(tmp_path, release_file, model, file, words):
    """Within the DeiT family: the file's model and options, the model's, the config."""
    name, config = {'slab_deit_mini': ('SLAB-DeiT', 'slab_deit_tiny.py'),
                    'deit_prepbn_mini': ('DeiT-PRepBN', 'deit_small_prepbn.py'),
                    'deit_repbn_mini': ('DeiT-RepBN', 'deit_tiny_prepbn.py')}[file]
    _refused(tmp_path, classifier_cfg(model), release_file(file), 'Nothing was loaded',
             f'The file is a {name} (', config, *words)


def test_a_head_of_another_class_count(tmp_path, release_file):
    """Refused with the class counts and how to leave the head out; with
    ``drop_head=True`` the backbone (and SLAB-Swin's final norm) load, the model's own
    head stays."""
    cfg = classifier_cfg('slab_swin_mini', num_classes=10)
    _refused(tmp_path / 'a', cfg, release_file('slab_swin_mini'), "file's head has 1000 classes",
             "the model's 10", 'drop_head=True', '--drop-head')
    runner = make_runner(tmp_path / 'b', cfg,
                         hooks=[dict(type='ReleaseCheckpointHook', drop_head=True)],
                         load_from=release_file('slab_swin_mini'))
    head = {k: v.clone() for k, v in runner.model.head.state_dict().items()}
    runner.load_or_resume()
    sd = release_state_dict('slab_swin_mini')
    assert torch.equal(runner.model.backbone.norm.norm1.weight, sd['norm.norm1.weight'])
    assert torch.equal(runner.model.backbone.stages[0].blocks[0].attn.qkv.weight,
                       sd['layers.0.blocks.0.attn.qkv.weight'])
    assert all(torch.equal(v, head[k]) for k, v in runner.model.head.state_dict().items())


def test_a_folded_classifier_refuses_the_trained_release_file(tmp_path, release_file):
    cfg = classifier_cfg('slab_swin_mini')
    cfg['backbone']['deploy'] = True
    _refused(tmp_path, cfg, release_file('slab_swin_mini'), 'trained-form (unfolded)',
             'deploy=True')


def test_a_classifier_checkpoint_round_trips(tmp_path, loaded):
    """An mmengine checkpoint of the classifier (what training saves) loads as it is."""
    model = loaded('slab_pvt_mini')
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    again = load_through_runner(tmp_path / 'run', classifier_cfg('slab_pvt_mini'), str(path))
    assert _unchanged(again.model, model.state_dict())


# ------------------------------------------------------------------ the offline tool


def _mini_config(tmp_path, name, extra='', **head):
    """A config file: the mini's configs/cls config with the mini's structure."""
    spec = MINIS[name]
    head = dict(in_channels=spec['channels'], **head)
    path = tmp_path / f'{name}_cls_{uuid.uuid4().hex[:8]}.py'
    path.write_text(f"_base_ = [{osp.join(CONFIGS, spec['config'])!r}]\n"
                    f"model = dict(backbone=dict(arch=dict(_delete_=True, **{spec['arch']!r})), "
                    f"head={head!r})\n"
                    + extra)
    return str(path)


def test_convert_checkpoint_classifier_mode(tmp_path, release_file, load_tool, loaded):
    tool = load_tool('convert_checkpoint')
    src, dst = release_file('slab_swin_mini'), str(tmp_path / 'cls.pth')
    config = _mini_config(tmp_path, 'slab_swin_mini')
    tool.main([src, dst, '--classifier', config])
    out = torch.load(dst, weights_only=True)
    assert out['meta']['converted_from'] == src
    want = loaded('slab_swin_mini').state_dict()
    assert set(out['state_dict']) == {k for k in want if not k.endswith('.lam')}
    assert all(torch.equal(v, want[k]) for k, v in out['state_dict'].items())
    # refused: nothing written
    bad = str(tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match="file's head has 1000 classes"):
        tool.main([src, bad, '--classifier', _mini_config(tmp_path, 'slab_swin_mini',
                                                          num_classes=10)])
    with pytest.raises(ValueError, match='release classification file of the DeiT family'):
        tool.main([osp.join(CLS_DATA, 'slab_deit_mini_official.pth'), bad, '--classifier',
                   config])
    with pytest.raises(ValueError, match='refusing to overwrite the input'):
        tool.main([src, src, '--classifier', config])
    assert not osp.exists(bad)
    tool.main([src, bad, '--classifier', _mini_config(tmp_path, 'slab_swin_mini',
                                                      num_classes=10), '--drop-head'])
    assert not any(k.startswith('head.') for k in torch.load(bad, weights_only=True)['state_dict'])


# ------------------------------------------------------------------ Swin windows


def test_release_windows_of_slab_swin():
    """clamp_windows at 224: windows 56 / 28 / 7 / 7, shifted blocks only in stage 3 (the
    release's classification model); the detection default shifts every odd block."""
    init_default_scope('mmpretrain')
    backbone = MODELS.build(classifier_cfg('slab_swin_mini')).backbone
    assert backbone.arch_settings['window_sizes'] == [56, 28, 7, 7]
    assert [[b.shift_size for b in s.blocks] for s in backbone.stages] == \
        [[0, 0], [0, 0], [0, 3], [0, 0]]
    wide = dict(classifier_cfg('slab_swin_mini')['backbone'], window_sizes=(56, 56, 7, 7))
    assert MODELS.build(wide).arch_settings['window_sizes'] == [56, 28, 7, 7]
    det = dict(wide, clamp_windows=False, final_norm=False, out_indices=(0, 1, 2, 3))
    det = MODELS.build(det)
    assert [[b.shift_size for b in s.blocks] for s in det.stages] == \
        [[0, 28], [0, 28], [0, 3], [0, 3]]
    assert not hasattr(det, 'norm') and hasattr(det, 'norm3')
    with pytest.raises(ValueError, match=r'final_norm=True normalises the last stage'):
        MODELS.build(dict(wide, out_indices=(0, 1)))


def test_release_file_through_the_backbone_init_cfg(release_file):
    """A final-norm SLABSwin loads the release file's final norm through its own init_cfg
    (a classifier with a new head: the backbone's Pretrained)."""
    cfg = classifier_cfg('slab_swin_mini')['backbone']
    cfg['init_cfg'] = dict(type='Pretrained', checkpoint=release_file('slab_swin_mini'))
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    sd = release_state_dict('slab_swin_mini')
    assert torch.equal(backbone.norm.norm2.bn.running_mean, sd['norm.norm2.bn.running_mean'])


def test_recalibrate_bn_runs_on_a_classifier_config(tmp_path, loaded, load_tool):
    """tools/recalibrate_bn.py with a classifier config (and model.train_cfg=None: no
    mixup / cutmix in the statistics) on a tiny image folder."""
    data = tmp_path / 'data'
    for c in ('a', 'b'):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(
                data / c / f'{i}.png')
    model = loaded('slab_pvt_mini')
    ckpt = tmp_path / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    config = _mini_config(tmp_path, 'slab_pvt_mini', extra=(
        'train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, '
        f'dataset=dict(_delete_=True, type="CustomDataset", data_root={str(data)!r}, '
        'pipeline={{_base_.train_pipeline}}))\n'))
    out = str(tmp_path / 'recal.pth')
    tool = load_tool('recalibrate_bn')
    tool.main([config, str(ckpt), '--iters', '2', '--out', out, '--cfg-options',
               'model.train_cfg=None', f'work_dir={tmp_path / "work"}'])
    sd = torch.load(out, weights_only=True)['state_dict']
    key = 'backbone.stages.0.blocks.0.norm1.norm2.bn.running_var'
    assert not torch.equal(sd[key], model.state_dict()[key])  # re-estimated
    key = 'head.fc.weight'
    assert torch.equal(sd[key], model.state_dict()[key])  # weights untouched


# ------------------------------------------------------------------ EMA


class _RecordEMA(Hook):
    """After every iteration (after EMAHook's update): the lam of every PRepBN of the
    EMA model."""
    priority = 'LOWEST'

    def __init__(self):
        self.lams = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        ema = next(h for h in runner.hooks if isinstance(h, EMAHook)).ema_model.module
        self.lams.append([float(m.lam) for m in ema.modules() if isinstance(m, PRepBN)])


@pytest.mark.parametrize('update_buffers', [True, False])
def test_ema_model_follows_the_lam_schedule(tmp_path, update_buffers):
    """mmengine's EMAHook (update_buffers=True: timm ModelEma's averaging of buffers, as
    the release's main_ema.py) in a real Runner: the averaged model's lam is the schedule's
    at every iteration and in the saved checkpoint, not an average of past values."""
    record = _RecordEMA()
    n = 6
    runner = Runner(**toy_runner_cfg(
        tmp_path, max_iters=n,
        custom_hooks=[dict(type='PRepBNHook', r0=1.0, decay_iters=4),
                      dict(type='EMAHook', momentum=0.5, update_buffers=update_buffers,
                           priority='ABOVE_NORMAL')],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=n, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1))))
    runner.register_hook(record)
    runner.train()
    want = [max(0.0, 1.0 - i / 4) for i in range(n)]
    assert record.lams == [[lam, lam] for lam in want]
    ckpt = torch.load(tmp_path / f'iter_{n}.pth', weights_only=True)
    ema = ckpt['ema_state_dict']
    assert [float(ema[k]) for k in ('module.norm0.lam', 'module.norm1.lam')] == [want[-1]] * 2
    # the averaged weights did move away from the trained ones (the EMA is real)
    assert rel_error(ckpt['state_dict']['fc.weight'], ema['module.fc.weight']) > 0


# ------------------------------------------------------------------ mim test, end to end


@pytest.mark.slow
def test_mim_test_takes_the_released_file(tmp_path, release_file):
    """`mim test mmpretrain <config> --checkpoint <released file>`, the file as released
    (the SLAB-Swin mini's), on a tiny image folder."""
    data = tmp_path / 'data'
    for c in ('a', 'b'):
        (data / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((torch.rand(230, 250, 3) * 255).byte().numpy()).save(
                data / c / f'{i}.png')
    config = _mini_config(tmp_path, 'slab_swin_mini', extra=(
        'test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, '
        f'dataset=dict(_delete_=True, type="CustomDataset", data_root={str(data)!r}, '
        'pipeline={{_base_.test_pipeline}}))\n'))
    out, _ = mim('test', 'mmpretrain', config, '--checkpoint', release_file('slab_swin_mini'),
                 '--work-dir', tmp_path / 'work', log_file=tmp_path / 'mim_test.log')
    assert f"ReleaseCheckpointHook: 255 tensors of {release_file('slab_swin_mini')} fit" in out
    assert 'Epoch(test) [2/2]' in out and 'accuracy/top1' in out
