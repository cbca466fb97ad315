"""mmslab: SLAB backbones (Simplified Linear Attention + Progressive Re-parameterized
BatchNorm) for mmdet 3.x and mmsegmentation 1.x.

Importing the package registers its modules in mmengine's *root* registries
(``mmengine.registry.MODELS`` / ``HOOKS``), so both mmdet- and mmseg-scoped configs find
them by plain ``type=`` after
``custom_imports=dict(imports=['mmslab'], allow_failed_imports=False)``.
"""
__version__ = '0.1.0'

from . import hooks, models  # noqa: E402,F401  (registers SLABPVT, SLABSwin, PRepBNHook)
