"""Reading an mmengine config for a library function: a fresh :class:`~mmengine.config.Config`
that the function may change without touching its caller's."""
import copy
import os
from typing import Optional, Union

from mmengine.config import Config


def load_config(config: Union[str, 'os.PathLike[str]', Config],
                cfg_options: Optional[dict] = None) -> Config:
    """``config`` read from its file (a path) or deep-copied (a ``Config``), with
    ``cfg_options`` (``{'a.b': value}``, as ``--cfg-options``) merged into it."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = Config.fromfile(os.fspath(config))
    else:
        raise TypeError(f'config must be a path or an mmengine Config, got {config!r} '
                        f'({type(config).__name__})')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg
