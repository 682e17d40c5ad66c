"""Atomic file writes: a temporary file in the target's folder, fsync, ``os.replace``, then an
fsync of the folder.

A reader (or a run resumed after a crash) sees either the old file or the new one, never a
half-written file.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    A symlink is written through (its target is replaced, the link kept); an existing path that is
    not a regular file (a device such as /dev/null, a FIFO) is refused with ``OSError``: the
    rename would remove it. An existing file keeps its permission bits.
    """
    path = Path(os.path.realpath(path))
    mode = check_replaceable(path)
    # like tempfile.mkstemp, but with the permissions an ordinary open() gives (0o666 & ~umask)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """fsync the folder, so that the rename itself survives a power loss (POSIX; where a folder
    cannot be opened, as on Windows, the rename is as durable as the system makes it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: nothing more to do
        pass
    finally:
        os.close(fd)


def check_replaceable(path: str | os.PathLike) -> int | None:
    """The permission bits of the regular file at ``path`` (symlinks followed), None when nothing
    is there; ``OSError`` for anything else, which an atomic rename would destroy."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (the folder is checked apart)
        return None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device or a pipe)"
        why = f"it is {what}: writing replaces the file atomically"
        raise OSError(errno.EINVAL, why, str(path))
    return stat.S_IMODE(st.st_mode)


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Raise ``OSError`` unless :func:`write_atomic` can create its temporary file in ``folder``.

    Tries it: creates and removes an empty temporary file (``os.access`` says yes to root on
    read-only and pseudo file systems such as ``/proc``).
    """
    tmp = Path(folder) / f".fastal-write-check.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    os.close(fd)
    tmp.unlink()


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy, no pickles) atomically."""
    write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (.npz, no pickles) atomically."""
    write_atomic(path, lambda f: np.savez(f, **arrays))
