"""A non-editable install of the repository carries every file the package names.

The package is built and installed from a copy of what a source distribution holds
(``pyproject.toml``, ``README.md``, the ``mmslab`` tree) with ``pip install --no-deps
--no-build-isolation --target``; a fresh interpreter then imports mmslab from the target
(first on ``sys.path``, outside the checkout) and checks that every path the package names
-- module-level path constants such as the mmdeploy deploy config -- lies inside the
installed package and exists, and that the deploy config reads as an mmengine config.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# run in the fresh interpreter: every module of the installed mmslab, and the path
# constants they define
PROBE = r'''
import importlib, json, os, os.path as osp, pkgutil, sys, warnings
warnings.filterwarnings('ignore')
import mmslab
pkg = osp.dirname(osp.abspath(mmslab.__file__))
paths, errors = {}, {}
for info in pkgutil.walk_packages(mmslab.__path__, 'mmslab.'):
    try:
        module = importlib.import_module(info.name)
    except Exception as e:  # reported, not hidden
        errors[info.name] = f'{type(e).__name__}: {e}'
        continue
    for key, value in vars(module).items():
        if isinstance(value, str) and osp.isabs(value) and not key.startswith('__'):
            paths[f'{info.name}.{key}'] = value
from mmslab.mmdeploy_ort import DEPLOY_CFG
from mmengine.config import Config
cfg = Config.fromfile(DEPLOY_CFG)
print(json.dumps(dict(pkg=pkg, paths=paths, errors=errors, deploy_cfg=DEPLOY_CFG,
                      opset=cfg.onnx_config.opset_version,
                      backend=cfg.backend_config.type)))
'''


def _sdist_like_copy(dst: str) -> None:
    """What a source distribution of the repository holds."""
    os.makedirs(dst)
    for name in ('pyproject.toml', 'README.md', 'setup.py', 'setup.cfg', 'MANIFEST.in',
                 'LICENSE'):
        if osp.isfile(osp.join(ROOT, name)):
            shutil.copy2(osp.join(ROOT, name), dst)
    shutil.copytree(osp.join(ROOT, 'mmslab'), osp.join(dst, 'mmslab'),
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp('packaging')
    src, target = str(base / 'src'), str(base / 'site')
    _sdist_like_copy(src)
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps',
                           '--no-build-isolation', '--no-compile', '--quiet', '--target',
                           target, src], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = base / 'elsewhere'  # neither the checkout nor the target
    run_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=target)
    proc = subprocess.run([sys.executable, '-c', PROBE], capture_output=True, text=True,
                          cwd=str(run_dir), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target, json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_package_is_imported_from_the_target(installed):
    target, probe = installed
    assert probe['pkg'] == osp.join(target, 'mmslab')
    assert not probe['errors'], probe['errors']


def test_every_path_the_package_names_is_inside_it_and_exists(installed):
    target, probe = installed
    pkg = probe['pkg']
    assert probe['paths'], 'no path constant found: the probe is broken'
    for name, path in probe['paths'].items():
        assert path.startswith(pkg + os.sep), f'{name} = {path} lies outside the package'
        assert osp.exists(path), f'{name} = {path} is missing from the installed package'


def test_the_deploy_config_ships_and_reads(installed):
    target, probe = installed
    assert probe['deploy_cfg'].startswith(probe['pkg'] + os.sep)
    assert (probe['opset'], probe['backend']) == (17, 'onnxruntime')
    # the checkout's configs/mmdeploy file inherits the packaged one: one copy
    from mmengine.config import Config
    repo = Config.fromfile(osp.join(ROOT, 'configs', 'mmdeploy',
                                    'mask-rcnn_onnxruntime_dynamic.py'))
    assert repo.onnx_config.opset_version == 17
