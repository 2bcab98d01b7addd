"""Atomic file writes that honour the umask: the one implementation every writer of the package uses.

:func:`atomic_writer` opens a unique hidden temporary file next to the target, hands it to the
caller, and on success renames it over the target with :func:`os.replace` (atomic on POSIX and
Windows within one file system); on any error the temporary file is removed, so the target never
holds a partial file. The temporary file is created with mode ``0o666`` filtered by the process
umask, like any file ``open`` creates: results, checkpoints and fitted explainers are as readable
by colleagues as the datasets are (``tempfile.mkstemp`` would create them ``0o600``).
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from typing import BinaryIO, Iterator

__all__ = ["TMP_SUFFIX", "atomic_writer", "atomic_write_bytes", "is_temp_name"]

#: Suffix of the temporary names (hidden: they also start with a dot).
TMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_writer`'s temporary names."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``with atomic_writer(path) as fh: fh.write(...)``: ``path`` appears whole on success, untouched on error.

    The folder of ``path`` must exist. No ``fsync``: after a power loss a file may be empty, which
    every reader of the package detects (hashes, checksums, format checks).
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_writer`."""
    with atomic_writer(path) as fh:
        fh.write(data)
