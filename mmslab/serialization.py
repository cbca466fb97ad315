"""mmengine checkpoints under ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True`` by default: its unpickler builds tensors,
containers and primitive types, and only the globals allow-listed with
``torch.serialization.add_safe_globals``. An mmengine 0.10.x training checkpoint holds objects of
two other kinds: the message hub's ``HistoryBuffer`` (the logged scalars, saved so that a
resumed run continues its logs, with numpy arrays inside) and numpy scalars (e.g. the
runtime info's ``eta``, a ``numpy.float64``). Pickled the default way, a ``HistoryBuffer`` also
carries its statistics methods as ``getattr(HistoryBuffer, 'min')`` calls, i.e. a
``builtins.getattr`` global, which no allow-list should hold.

Importing mmslab (which ``custom_imports`` does before mmengine loads anything) calls
:func:`register`, which

* registers a pickle reducer for ``HistoryBuffer``: from then on a buffer pickles as
  ``HistoryBuffer(log_history, count_history, max_length)`` with plain lists (no numpy
  arrays, no method references) and unpickles through its own constructor — the values,
  counts and length of the history, which is what resuming reads;
* allow-lists exactly :data:`SAFE_GLOBALS`: the ``HistoryBuffer`` class (its constructor
  builds the buffer from those lists) and what numpy scalars and arrays of bool / integer /
  float dtypes unpickle through (numpy's ``scalar`` and ``_reconstruct``, ``ndarray``,
  ``numpy.dtype`` and those dtypes' classes: values from their raw bytes, no code; an
  object dtype stays refused);
* for files written before the reducer existed (plain mmengine), where the torch version
  lets a global be registered under a name of its own (torch >= 2.6), resolves the
  ``builtins.getattr`` global of such a file to :func:`history_buffer_method`, which
  returns a ``HistoryBuffer`` statistics method and refuses everything else.

Nothing here turns ``weights_only`` off. The one load that trusts a file is explicit:
:func:`load_trusted` (``tools/convert_checkpoint.py --trust``), for a file the user
vouches for whose extra entries need other globals.
"""
import copyreg
from typing import Any, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _numpy_globals() -> List[Any]:
    """What ``pickle`` of a numpy scalar or array of a bool, integer or floating dtype names:
    numpy's ``scalar`` and ``_reconstruct``, ``ndarray``, ``numpy.dtype`` and the classes of
    those dtypes."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    kinds = '?bBhHiIlLqQefd'
    return [scalar, _reconstruct, np.ndarray, np.dtype] + list(
        dict.fromkeys(type(np.dtype(k)) for k in kinds))


#: what mmslab allow-lists for ``weights_only=True`` loads
SAFE_GLOBALS: List[Any] = [HistoryBuffer] + _numpy_globals()


def _reduce_history_buffer(buf: HistoryBuffer) -> tuple:
    """Pickle a ``HistoryBuffer`` as a call of its constructor with plain lists."""
    return HistoryBuffer, (buf._log_history.tolist(), buf._count_history.tolist(),
                           buf.max_length)


def history_buffer_method(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what an mmengine checkpoint pickles with it: a statistics
    method of ``HistoryBuffer`` (``HistoryBuffer.min`` ...). Anything else is refused."""
    if obj is HistoryBuffer and isinstance(name, str) \
            and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise torch.serialization.pickle.UnpicklingError(
        f'weights_only load: refusing getattr({obj!r}, {name!r}); mmslab only resolves '
        'HistoryBuffer statistics methods (min, max, current, mean, ...) this way')


def _named_globals_supported() -> bool:
    """Whether ``add_safe_globals`` takes ``(global, 'module.name')`` pairs: torch >= 2.6
    (torch 2.5 stores such a pair and then fails every weights_only load on it)."""
    return torch.__version__ >= (2, 6)


def register() -> None:
    """Register the reducer and the allow-list (idempotent; see the module docstring)."""
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    if _named_globals_supported():
        torch.serialization.add_safe_globals([(history_buffer_method, 'builtins.getattr')])


def load_trusted(filename: str, map_location: Any = 'cpu') -> Any:
    """``torch.load(weights_only=False)`` of a file the caller has said it trusts: unpickling
    may run any code the file names. Used only where a user asks for it explicitly."""
    return torch.load(filename, map_location=map_location, weights_only=False)
