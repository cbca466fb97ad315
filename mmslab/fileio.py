"""Safe file output for the tools: never onto an input, always atomic.

* :func:`check_outputs` refuses an output path that is (or resolves to, through symlinks
  or hard links) one of the inputs.
* :func:`atomic_write` / :func:`atomic_save` / :func:`atomic_write_text` write to a
  temporary file in the destination's folder, ``fsync`` it and ``os.replace`` it onto the
  destination. An interrupted write (an exception, ``SIGKILL``, a full disk) leaves the
  old file intact or no file, never a partial one; on an exception the temporary file is
  removed (after ``SIGKILL`` a hidden ``.<name>.<random>.tmp`` may remain next to it).
"""
import contextlib
import os
import os.path as osp
import secrets
import stat
from typing import IO, Any, Dict, Iterator, Optional, Union

import torch

PathLike = Union[str, 'os.PathLike[str]']


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: equal real paths (symlinks resolved),
    or, where both exist, the same inode (hard links)."""
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Dict[str, Optional[PathLike]],
                  inputs: Dict[str, Optional[PathLike]],
                  owner: str = '') -> None:
    """Refuse any output that is the same file as an input.

    Args:
        outputs: ``{description: path}`` of every file about to be written, derived
            files included (e.g. ``{'folded checkpoint': out, 'its config': cfg_out}``).
        inputs: ``{description: path}`` of every file read (``None`` entries and URLs are
            skipped).
        owner: the tool's name, for the message.

    Raises:
        ValueError: ``refusing to overwrite the input <what> <path>: the <output> <path>
            is the same file``.
    """
    prefix = f'{owner}: ' if owner else ''
    for in_what, src in inputs.items():
        if src is None or '://' in str(src):
            continue
        for out_what, dst in outputs.items():
            if dst is not None and same_file(dst, src):
                real = osp.realpath(dst)
                via = '' if osp.abspath(dst) == real else f' (it resolves to {real})'
                raise ValueError(f'{prefix}refusing to overwrite the input {in_what} {src}: '
                                 f'the {out_what} {dst} is the same file{via}. Choose '
                                 f'another output path.')
    outs = [(w, p) for w, p in outputs.items() if p is not None]
    for i, (w1, p1) in enumerate(outs):
        for w2, p2 in outs[i + 1:]:
            if same_file(p1, p2):
                raise ValueError(f'{prefix}the {w1} {p1} and the {w2} {p2} are the same file')


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success it is flushed,
    ``fsync``-ed and renamed onto ``path`` (which then holds the complete new content),
    on an exception it is removed and ``path`` is left as it was.

    A symlink at ``path`` is written through (its target gets the new content, as
    ``open(path, 'w')`` would). Missing parent folders are created. A new file gets the
    permissions ``open`` would give it (the umask applies), a replaced one keeps its own.
    """
    if mode not in ('w', 'wb', 'wt'):
        raise ValueError(f"atomic_write: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    target = osp.realpath(path)
    folder = osp.dirname(target)
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(target)}.{secrets.token_hex(4)}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if osp.exists(target):  # a replaced file keeps its permissions
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    # make the rename itself durable
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, 'wb') as f:
        torch.save(obj, f)


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, 'wb') as f:
        f.write(text.encode('utf-8'))
