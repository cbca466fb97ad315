"""mmslab: SLAB backbones (Simplified Linear Attention + Progressive Re-parameterized
BatchNorm) for mmdet 3.x and mmsegmentation 1.x.

Importing the package registers its modules in mmengine's *root* registries
(``mmengine.registry.MODELS`` / ``HOOKS``), so both mmdet- and mmseg-scoped configs find
them by plain ``type=`` after
``custom_imports=dict(imports=['mmslab'], allow_failed_imports=False)``, and lets torch's
``weights_only=True`` loader read mmengine checkpoints (:mod:`mmslab.serialization`).
"""
__version__ = '0.1.0'

from . import hooks, mmpretrain_compat, models, prepbn, serialization  # noqa: E402,F401  (registers SLABPVT, SLABSwin, PRepBN, PRepBNHook)

serialization.register()
mmpretrain_compat.install()
