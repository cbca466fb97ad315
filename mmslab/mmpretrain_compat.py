"""mmpretrain next to a ``transformers`` it cannot import.

mmpretrain 1.2 imports its multimodal models (BLIP, BLIP-2, OFA, LLaVA, ...) from
``mmpretrain.models`` whenever ``transformers >= 4.28`` is installed
(``mmpretrain.utils.dependency.WITH_MULTIMODAL``). Those modules subclass names that newer
``transformers`` releases moved or removed (``PreTrainedModel`` is taken from
``transformers.modeling_utils`` together with ``apply_chunking_to_forward``,
``find_pruneable_heads_and_indices`` and ``prune_linear_layer``); on transformers 5 the
import fails and with it ``import mmpretrain``: an image classifier cannot be built in an
environment that merely has a current ``transformers`` for other work.

:func:`install` (called by ``import mmslab``) adds an import hook: when
``mmpretrain.utils.dependency`` is first imported, ``WITH_MULTIMODAL`` is set to False if
the multimodal imports would fail, so mmpretrain registers its placeholders for those
models (they raise an ImportError naming the missing dependency when built) and everything
else imports. Nothing is changed where the multimodal models import, nor in an environment
without ``transformers``. ``MMSLAB_MMPRETRAIN_MULTIMODAL=1`` turns the hook off. mmslab must
be imported before mmpretrain (``custom_imports=dict(imports=['mmslab'])`` in a config is:
mmpretrain's models are imported when the runner builds them).
"""
import importlib.abc
import importlib.util
import os
import sys
from typing import Optional

TARGET = 'mmpretrain.utils.dependency'
#: what mmpretrain 1.2's BLIP language model imports from transformers
_NEEDED = ('PreTrainedModel', 'apply_chunking_to_forward', 'find_pruneable_heads_and_indices',
           'prune_linear_layer')


def multimodal_importable() -> bool:
    """Whether mmpretrain 1.2's multimodal models can import the ``transformers``
    installed here (False when it is absent)."""
    if importlib.util.find_spec('transformers') is None:
        return False
    try:
        modeling_utils = importlib.import_module('transformers.modeling_utils')
    except Exception:  # any failure to import it means the multimodal models fail too
        return False
    return all(getattr(modeling_utils, name, None) is not None for name in _NEEDED)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        if module.WITH_MULTIMODAL and not multimodal_importable():
            module.WITH_MULTIMODAL = False


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``mmpretrain.utils.dependency`` (see the module docstring)."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER: Optional[_Finder] = None


def install() -> bool:
    """Add the import hook (idempotent). False where it is off: mmpretrain's dependency
    module is already imported (nothing to do, or too late), or
    ``MMSLAB_MMPRETRAIN_MULTIMODAL=1``."""
    global _FINDER
    if os.environ.get('MMSLAB_MMPRETRAIN_MULTIMODAL') == '1' or TARGET in sys.modules:
        return False
    if _FINDER is None:
        _FINDER = _Finder()
        sys.meta_path.insert(0, _FINDER)
    return True
