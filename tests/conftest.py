"""Shared fixtures. Shared plain helpers are modules next to this file, importable by name
(``pythonpath`` in pyproject.toml puts ``tests/`` and ``tools/`` on ``sys.path``):
``_mini`` (the mini backbones: ``MINI``, ``mini_backbone(name, **overrides)``), ``_toy``
(a tiny PRepBN mmengine model / dataset / metric), ``_fold_terms``."""
import importlib.util
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Reference material of the SLAB release, trimmed, inside the repository (see its README.md)
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference')


def pytest_configure(config):
    """* Under pytest-xdist (``-n N``) each worker, and each process a test starts, gets
      ``cores // N`` threads (at least 1) unless ``OMP_NUM_THREADS`` is set: N workers of
      ``cores`` threads each would oversubscribe the cores.
    * ``MMSLAB_TEST_FLUSH_DENORMAL=1``: run the suite with denormals flushed to zero (a
      shake-out of comparisons that depend on the CPU's float kernels)."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1 and not os.environ.get('OMP_NUM_THREADS'):
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ['OMP_NUM_THREADS'] = str(threads)
        torch.set_num_threads(threads)
    if os.environ.get('MMSLAB_TEST_FLUSH_DENORMAL') == '1':
        assert torch.set_flush_denormal(True), 'this CPU cannot flush denormals'


# Tests that share a session-scoped training run live in one module: `make test` runs
# pytest-xdist with `--dist loadfile` (a module's tests on one worker; each worker has its
# own session, so a run used from two modules could train on both). xdist's finer
# `loadgroup` does not group on pytest 9 (its node-id suffix is ignored).
SHARED_RUNS = ('det_pvt_run', 'det_swin_trained')


def pytest_collection_modifyitems(config, items):
    for fixture in SHARED_RUNS:
        modules = sorted({item.nodeid.split('::')[0] for item in items
                          if fixture in getattr(item, 'fixturenames', ())})
        if len(modules) > 1:
            raise pytest.UsageError(f"the shared run '{fixture}' is used by {modules}: its "
                                    'tests must live in one module')


def release_state_dict(name: str, seed: int = 0) -> dict:
    """A full-size release-format state dict synthesised from reference/keys/<name>.txt
    (the key names, shapes and dtypes of a released ImageNet checkpoint)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    with open(os.path.join(REFERENCE, 'keys', f'{name}.txt')) as f:
        for line in f:
            key, shape, dtype = line.rstrip('\n').split('\t')
            shape = tuple(int(s) for s in re.findall(r'\d+', shape))
            if dtype == 'int64':
                sd[key] = torch.zeros(shape, dtype=torch.int64)
            else:
                sd[key] = torch.randn(shape, generator=gen) * 0.02
                if key.endswith('running_var'):
                    sd[key] = sd[key].abs() + 1
    return sd


@pytest.fixture(scope='session')
def release_weights():
    """``release_weights(name)`` -> the state dict ``release_checkpoint(name)`` holds.
    Synthesised once per session (1-3 s for a full-size model) and shared: read it, do
    not modify it."""
    cache = {}

    def get(name: str, seed: int = 0) -> dict:
        if (name, seed) not in cache:
            cache[name, seed] = release_state_dict(name, seed)
        return cache[name, seed]

    return get


@pytest.fixture(scope='session')
def release_checkpoint(tmp_path_factory, release_weights):
    """``release_checkpoint(name, wrap='model')`` -> path of a synthesised release file."""
    cache = {}

    def make(name: str, wrap: str = 'model') -> str:
        if (name, wrap) not in cache:
            sd = release_weights(name)
            path = tmp_path_factory.mktemp('release') / f'{name}_{wrap}.pth'
            torch.save({wrap: sd, 'epoch': 300} if wrap else sd, path)
            cache[name, wrap] = str(path)
        return cache[name, wrap]

    return make


def _load_tool(name: str):
    """Import ``tools/<name>.py`` as a new module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f'mmslab_tool_{name}',
                                                  os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def load_tool():
    """``load_tool(name)`` -> ``tools/<name>.py`` imported afresh as a module."""
    return _load_tool


# ------------------------------------------------------------------ end-to-end runs
# Session-scoped: every e2e module (tests/test_e2e*.py) shares one synthetic COCO / ADE
# set and one training run of each mini detector. Helpers and configs: tests/_e2e.py.


@pytest.fixture(scope='session')
def e2e_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('e2e')


@pytest.fixture(scope='session')
def coco_root(e2e_dir):
    from _e2e import CLASSES, IMAGE_SIZE, NUM_TRAIN, NUM_VAL

    from mmslab.datasets import SHAPE_CLASSES, make_coco_instances
    assert tuple(SHAPE_CLASSES) == CLASSES
    root = os.path.join(e2e_dir, 'coco')
    files = make_coco_instances(root, num_train=NUM_TRAIN, num_val=NUM_VAL,
                                image_size=IMAGE_SIZE, seed=0)
    assert os.path.isfile(files['train']) and os.path.isfile(files['val'])
    return root + '/'


@pytest.fixture(scope='session')
def ade_root(e2e_dir):
    from _e2e import IMAGE_SIZE, NUM_TRAIN, NUM_VAL

    from mmslab.datasets import make_ade_semantic
    root = os.path.join(e2e_dir, 'ade')
    make_ade_semantic(root, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE,
                      seed=0)
    return root


@pytest.fixture(scope='session')
def det_pvt_cfg(e2e_dir, coco_root):
    """The demo Mask R-CNN + SLAB-PVT config (PRepBN schedule LayerNorm -> RepBN,
    norm_eval=False) with a mini SLAB-PVT, iteration-based (``TRAIN_ITERS``), decaying lam
    over half of the run (``PVT_DECAY``), no validation."""
    import _e2e as e
    return e.write_config(
        os.path.join(e2e_dir, 'mask_rcnn_slab_pvt_mini.py'), e.DEMO_DET,
        'backbone_override = dict(pretrain_img_size=image_size, **backbone)\n' + e.DET_BODY
        + f"custom_hooks = [dict(type='PRepBNHook', r0=1.0, decay_iters={e.PVT_DECAY})]\n",
        data_root=coco_root, image_size=e.IMAGE_SIZE, classes=e.CLASSES,
        max_iters=e.TRAIN_ITERS, backbone=e.PVT_MINI, backbone_channels=e.PVT_MINI_CHANNELS)


@pytest.fixture(scope='session')
def det_pvt_run_cfg(e2e_dir, coco_root):
    """The config of ``det_pvt_cfg``, epoch-based with validation: the shared run
    (``_e2e.RUN_BODY``)."""
    import _e2e as e
    return e.write_config(
        os.path.join(e2e_dir, 'mask_rcnn_slab_pvt_mini_run.py'), e.DEMO_DET,
        'backbone_override = dict(pretrain_img_size=image_size, **backbone)\n' + e.DET_BODY
        + e.RUN_BODY, data_root=coco_root, image_size=e.IMAGE_SIZE, classes=e.CLASSES,
        max_iters=e.RUN_ITERS, backbone=e.PVT_MINI, backbone_channels=e.PVT_MINI_CHANNELS,
        max_epochs=e.RUN_EPOCHS, decay=e.RUN_DECAY)


@pytest.fixture(scope='session')
def det_pvt_run(e2e_dir, det_pvt_run_cfg):
    """One `mim train mmdet` of the shared run; its checkpoints (``epoch_<k>.pth``), json
    log records and output."""
    import _e2e as e
    work_dir = os.path.join(e2e_dir, 'work_det_pvt')
    out, elapsed = e.mim('train', 'mmdet', det_pvt_run_cfg, '--work-dir', work_dir,
                         log_file=os.path.join(e2e_dir, 'train_det_pvt.log'),
                         env=e.helper_env())
    return dict(cfg=det_pvt_run_cfg, work_dir=work_dir, records=e.json_log(work_dir),
                ckpt=os.path.join(work_dir, f'epoch_{e.RUN_EPOCHS}.pth'),
                ckpt_of=lambda epoch: os.path.join(work_dir, f'epoch_{epoch}.pth'),
                out=out, time=elapsed)


@pytest.fixture(scope='session')
def det_pvt_tested(e2e_dir, det_pvt_run):
    """`mim test mmdet` of the shared run's last (converged) checkpoint, with ``--out``."""
    import _e2e as e
    work_dir = os.path.join(e2e_dir, 'test_det_pvt')
    preds = os.path.join(work_dir, 'preds.pkl')
    out, elapsed = e.mim('test', 'mmdet', det_pvt_run['cfg'], '--checkpoint',
                         det_pvt_run['ckpt'], '--work-dir', work_dir, '--out', preds,
                         log_file=os.path.join(e2e_dir, 'test_det_pvt.log'),
                         env=e.helper_env())
    return dict(metrics=e.eval_metrics(work_dir), preds=preds, out=out, time=elapsed)


@pytest.fixture(scope='session')
def det_swin_cfg(e2e_dir, coco_root):
    """The flagship Mask R-CNN + SLAB-Swin-T config (stock mmdet Swin recipe, PRepBNHook
    r0=0) with a mini SLAB-Swin, from scratch."""
    import _e2e as e
    return e.write_config(
        os.path.join(e2e_dir, 'mask_rcnn_slab_swin_mini.py'), e.SWIN_DET,
        'backbone_override = dict(pretrain_img_size=image_size, drop_path_rate=0.0,\n'
        '                         norm_eval=False, init_cfg=None, **backbone)\n' + e.DET_BODY,
        data_root=coco_root, image_size=e.IMAGE_SIZE, classes=e.CLASSES,
        max_iters=e.TRAIN_ITERS, backbone=e.SWIN_MINI, backbone_channels=e.SWIN_MINI_CHANNELS)


@pytest.fixture(scope='session')
def det_swin_trained(e2e_dir, det_swin_cfg):
    """One training run (mmdet's ``tools/train.py``, what `mim train mmdet` starts) of
    ``det_swin_cfg``: its work_dir and last checkpoint."""
    import _e2e as e
    work_dir = os.path.join(e2e_dir, 'work_det_swin')
    e.train_py('mmdet', det_swin_cfg, '--work-dir', work_dir,
               log_file=os.path.join(e2e_dir, 'train_det_swin.log'))
    return dict(cfg=det_swin_cfg, work_dir=work_dir,
                ckpt=os.path.join(work_dir, f'iter_{e.TRAIN_ITERS}.pth'))
