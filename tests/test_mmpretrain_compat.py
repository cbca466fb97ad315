"""mmpretrain next to a transformers release its multimodal models cannot import
(mmslab/mmpretrain_compat.py): with ``import mmslab`` first, mmpretrain's classifiers
import and build; the multimodal models become mmpretrain's own placeholders."""
import os
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import sys
    if sys.argv[1] == 'mmslab':
        import mmslab  # noqa: F401
    from mmpretrain.models import ImageClassifier  # noqa: F401
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import dependency
    MODELS.build(dict(type='ImageClassifier', backbone=dict(type='SLABPVT',
                 embed_dims=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=3, in_channels=8)))
    try:
        MODELS.build(dict(type='BlipCaption'))
    except ImportError as e:
        print('placeholder:', e)
    print('multimodal:', dependency.WITH_MULTIMODAL)
""")


def _fake_transformers(root: str) -> None:
    """A ``transformers`` 5 as mmpretrain sees it: the distribution's metadata and a
    ``modeling_utils`` without the helpers mmpretrain's BLIP imports from it."""
    pkg = os.path.join(root, 'transformers')
    os.makedirs(pkg)
    with open(os.path.join(pkg, '__init__.py'), 'w') as f:
        f.write("__version__ = '5.0.0'\n")
    with open(os.path.join(pkg, 'modeling_utils.py'), 'w') as f:
        f.write('class PreTrainedModel:\n    pass\n')
    info = os.path.join(root, 'transformers-5.0.0.dist-info')
    os.makedirs(info)
    with open(os.path.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: transformers\nVersion: 5.0.0\n')


def test_mmpretrain_imports_next_to_transformers_5_once_mmslab_is_imported(tmp_path):
    _fake_transformers(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    env.pop('MMSLAB_MMPRETRAIN_MULTIMODAL', None)
    runs = {which: subprocess.Popen([sys.executable, '-c', CHECK, which], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for which in ('plain', 'mmslab')}
    out = {which: p.communicate(timeout=300)[0] for which, p in runs.items()}
    # the failure the hook exists for: mmpretrain alone cannot import its models
    assert runs['plain'].returncode != 0, out['plain']
    assert 'transformers' in out['plain'] or 'NoneType' in out['plain'], out['plain']
    assert runs['mmslab'].returncode == 0, out['mmslab']
    assert 'multimodal: False' in out['mmslab']
    # (mmpretrain's placeholders all name the last model registered: its closure)
    assert 'requires extra multi-modal dependencies' in out['mmslab']


def test_the_hook_leaves_a_working_environment_alone():
    """Without transformers (as here) multimodal stays off by mmpretrain's own rule, and
    the check says the multimodal models cannot import."""
    from mmslab import mmpretrain_compat
    assert not mmpretrain_compat.multimodal_importable()
    from mmpretrain.utils import dependency
    assert dependency.WITH_MULTIMODAL is False
