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
