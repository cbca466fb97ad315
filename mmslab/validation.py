"""Argument validation: one sentence per bad argument, raised before anything is built.

Every ``check_*`` function takes the ``owner`` (the class or tool the argument belongs
to, e.g. ``'SLABPVT'``), the argument's ``name`` and its ``value``; it returns the value
normalised (plain Python ``int`` / ``float`` / ``tuple``) or raises

* :class:`TypeError` for a value of the wrong type (``bool`` is not accepted where an
  ``int`` or a number is expected, a ``float`` is not accepted where an ``int`` is), or
* :class:`ValueError` for a value of the right type outside what is accepted,

with a message naming the owner, the argument, the value and what is accepted, e.g.
``SLABPVT: frozen_stages must be in [-1, 4], got 7`` or
``SLABSwin: num_heads must be a sequence of 4 ints >= 1, got (1, 0, 4, 8): entry 1 is 0``.

:func:`argparse_int` / :func:`argparse_float` (and :func:`argparse_path`: a non-empty
path) wrap the same checks as ``type=`` of an ``argparse`` argument, so the command-line
tools reject bad values with argparse's usual ``error: argument --iters: ...`` message.
"""
import argparse
import math
import numbers
from typing import Any, Callable, Collection, List, Optional, Sequence, Tuple, Union

Number = Union[int, float]


def _type_name(value: Any) -> str:
    return type(value).__name__


def is_int(value: Any) -> bool:
    """An integral number that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number that is not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def describe_range(min: Optional[Number] = None,
                   max: Optional[Number] = None,
                   min_open: bool = False,
                   max_open: bool = False) -> str:
    """``'in [0, 1)'``, ``'>= 1'``, ``'> 0'``, ... or ``''`` for no bound."""
    if min is not None and max is not None:
        return f'in {"(" if min_open else "["}{min:g}, {max:g}{")" if max_open else "]"}'
    if min is not None:
        return f'{">" if min_open else ">="} {min:g}'
    if max is not None:
        return f'{"<" if max_open else "<="} {max:g}'
    return ''


def _in_range(value: Number, min: Optional[Number], max: Optional[Number], min_open: bool,
              max_open: bool) -> bool:
    if value != value:  # NaN
        return False
    if min is not None and (value <= min if min_open else value < min):
        return False
    if max is not None and (value >= max if max_open else value > max):
        return False
    return True


def check_int(owner: str, name: str, value: Any, min: Optional[int] = None,
              max: Optional[int] = None) -> int:
    """An ``int`` (any integral type, not ``bool``) in ``[min, max]``."""
    rng = describe_range(min, max)
    if not is_int(value):
        raise TypeError(f'{owner}: {name} must be an int{" " + rng if rng else ""}, '
                        f'got {value!r} ({_type_name(value)})')
    if not _in_range(value, min, max, False, False):
        raise ValueError(f'{owner}: {name} must be {rng}, got {value!r}')
    return int(value)


def check_float(owner: str, name: str, value: Any, min: Optional[float] = None,
                max: Optional[float] = None, min_open: bool = False,
                max_open: bool = False) -> float:
    """A finite real number (``int`` accepted; ``bool``, NaN and infinities not) in the
    given range, returned as ``float``. ``min_open`` / ``max_open`` exclude the bound."""
    rng = describe_range(min, max, min_open, max_open)
    if not is_number(value):
        raise TypeError(f'{owner}: {name} must be a number{" " + rng if rng else ""}, '
                        f'got {value!r} ({_type_name(value)})')
    if not math.isfinite(value) or not _in_range(value, min, max, min_open, max_open):
        raise ValueError(f'{owner}: {name} must be {rng or "a finite number"}, got {value!r}')
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0 / 1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f'{owner}: {name} must be True or False, got {value!r} '
                        f'({_type_name(value)})')
    return value


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> Any:
    """One of ``choices`` (compared with ``==``). A value of another type than all the
    choices raises ``TypeError``, one of the right type that is not a choice ``ValueError``."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value and a set of choices
        ok = False
    if ok:
        return value
    accepted = f'one of {list(choices)!r}'
    if not any(isinstance(value, type(c)) for c in choices):
        raise TypeError(f'{owner}: {name} must be {accepted}, got {value!r} '
                        f'({_type_name(value)})')
    raise ValueError(f'{owner}: {name} must be {accepted}, got {value!r}')


def _check_length(owner: str, name: str, value: Sequence, length: Optional[int],
                  length_hint: str) -> None:
    if length is not None and len(value) != length:
        hint = f' ({length_hint})' if length_hint else ''
        raise ValueError(f'{owner}: {name}={value!r} has {len(value)} entries, expected '
                         f'{length}{hint}')


def _check_seq(owner: str, name: str, value: Any, what: str, is_ok: Callable[[Any], bool],
               rng: str, in_range: Callable[[Any], bool], length: Optional[int],
               length_hint: str, scalar: bool, min_length: int) -> List[Any]:
    count = f'{length} ' if length is not None else ''
    accepted = (f'a sequence of {count}{what}s{" " + rng if rng else ""}'
                + (f' (or one {what} for all)' if scalar else ''))
    if scalar and is_ok(value):
        if not in_range(value):
            raise ValueError(f'{owner}: {name} must be {accepted}, got {value!r}')
        return [value] * (1 if length is None else length)
    if not _is_sequence(value):
        raise TypeError(f'{owner}: {name} must be {accepted}, got {value!r} '
                        f'({_type_name(value)})')
    _check_length(owner, name, value, length, length_hint)
    if len(value) < min_length:
        entries = 'entry' if min_length == 1 else 'entries'
        raise ValueError(f'{owner}: {name} must be {accepted} with at least {min_length} '
                         f'{entries}, got {value!r}')
    for i, v in enumerate(value):
        if not is_ok(v):
            raise TypeError(f'{owner}: {name} must be {accepted}, got {value!r}: entry {i} '
                            f'is {v!r} ({_type_name(v)})')
        if not in_range(v):
            raise ValueError(f'{owner}: {name} must be {accepted}, got {value!r}: entry {i} '
                             f'is {v!r}')
    return list(value)


def check_int_seq(owner: str, name: str, value: Any, length: Optional[int] = None,
                  min: Optional[int] = None, max: Optional[int] = None,
                  length_hint: str = '', scalar: bool = False,
                  min_length: int = 0) -> Tuple[int, ...]:
    """A list / tuple of ints (not ``bool``, not ``float``), each in ``[min, max]``, of
    ``length`` entries if given (``length_hint`` says why, e.g. ``'one per stage'``).
    ``scalar=True`` also accepts one int, repeated ``length`` times."""
    out = _check_seq(owner, name, value, 'int', is_int, describe_range(min, max),
                     lambda v: _in_range(v, min, max, False, False), length, length_hint,
                     scalar, min_length)
    return tuple(int(v) for v in out)


def check_out_indices(owner: str, value: Any, num_stages: int) -> Tuple[int, ...]:
    """A backbone's ``out_indices``: distinct stage indices (an int or a sequence of ints;
    negative ones count from the end), returned sorted and non-negative."""
    values = check_int_seq(owner, 'out_indices', value, scalar=True, min_length=1)
    out = tuple(sorted(i % num_stages if -num_stages <= i < 0 else i for i in values))
    if any(not 0 <= i < num_stages for i in out) or len(set(out)) != len(out):
        raise ValueError(f'{owner}: out_indices={tuple(values)} must be distinct stage '
                         f'indices in [0, {num_stages - 1}] (or negative, from the end)')
    return out


def check_float_seq(owner: str, name: str, value: Any, length: Optional[int] = None,
                    min: Optional[float] = None, max: Optional[float] = None,
                    min_open: bool = False, max_open: bool = False, length_hint: str = '',
                    scalar: bool = False) -> Tuple[float, ...]:
    """Like :func:`check_int_seq` for real numbers (ints accepted), returned as floats."""
    out = _check_seq(owner, name, value, 'number', is_number,
                     describe_range(min, max, min_open, max_open),
                     lambda v: _in_range(v, min, max, min_open, max_open), length,
                     length_hint, scalar, 0)
    return tuple(float(v) for v in out)


def check_size_2d(owner: str, name: str, value: Any, min: int = 1) -> Tuple[int, int]:
    """An image / grid size: one int or an ``(h, w)`` pair of ints, each ``>= min``;
    returned as a pair."""
    accepted = f'an int >= {min} or a (height, width) pair of ints >= {min}'
    pair = (value, value) if is_int(value) else value
    if not _is_sequence(pair) or not all(is_int(v) for v in pair):
        raise TypeError(f'{owner}: {name} must be {accepted}, got {value!r} '
                        f'({_type_name(value)})')
    if len(pair) != 2 or any(v < min for v in pair):
        raise ValueError(f'{owner}: {name} must be {accepted}, got {value!r}')
    return int(pair[0]), int(pair[1])


def check_str_letters(owner: str, name: str, value: Any, letters: str,
                      length: Optional[int] = None, meaning: str = '',
                      length_hint: str = '') -> str:
    """A string of ``length`` letters from ``letters`` (e.g. ``'LLSS'``). A list / tuple of
    single letters and lower case are accepted too; the result is an upper-case string
    when ``letters`` are upper case."""
    what = meaning or ' or '.join(repr(c) for c in letters)
    accepted = (f'a string of {f"{length} " if length is not None else ""}letters, each '
                f'{what}')
    if _is_sequence(value) and all(isinstance(c, str) and len(c) == 1 for c in value):
        value = ''.join(value)
    if not isinstance(value, str):
        raise TypeError(f'{owner}: {name} must be {accepted}, got {value!r} '
                        f'({_type_name(value)})')
    if letters.isupper():
        value = value.upper()
    _check_length(owner, name, value, length, length_hint)
    bad = sorted(set(value) - set(letters))
    if bad or not value:
        raise ValueError(f'{owner}: {name} must be {accepted}, got {value!r}'
                         + (f' ({", ".join(map(repr, bad))} not accepted)' if bad else ''))
    return value


def _phrase(*parts: str) -> str:
    return ' '.join(p for p in parts if p)


def argparse_int(min: Optional[int] = None, max: Optional[int] = None) -> Callable[[str], int]:
    """``type=`` for argparse: an int in ``[min, max]`` (argparse reports the error)."""
    rng = describe_range(min, max)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(_phrase('must be an int', rng) + f', got {text!r}')
        if not _in_range(value, min, max, False, False):
            raise argparse.ArgumentTypeError(f'must be {rng}, got {value}')
        return value

    parse.__name__ = 'int'
    return parse


def argparse_float(min: Optional[float] = None, max: Optional[float] = None,
                   min_open: bool = False, max_open: bool = False) -> Callable[[str], float]:
    """``type=`` for argparse: a finite number in the given range."""
    rng = describe_range(min, max, min_open, max_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(_phrase('must be a number', rng) + f', got {text!r}')
        if not math.isfinite(value) or not _in_range(value, min, max, min_open, max_open):
            raise argparse.ArgumentTypeError(_phrase('must be a finite number', rng)
                                             + f', got {text}')
        return value

    parse.__name__ = 'float'
    return parse


def argparse_path(text: str) -> str:
    """``type=`` for argparse: a path (not an empty or blank string)."""
    if not text.strip():
        raise argparse.ArgumentTypeError('must be a path, got an empty string')
    return text
