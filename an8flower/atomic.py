"""Atomic file writes that honour the umask: the one implementation every writer of the package uses.

:func:`atomic_writer` opens a unique hidden temporary file next to the target, hands it to the
caller, and on success renames it over the target with :func:`os.replace` (atomic on POSIX and
Windows within one file system); on any error the temporary file is removed, so the target never
holds a partial file. The temporary file is created with mode ``0o666`` filtered by the process
umask, like any file ``open`` creates: results, checkpoints and fitted explainers are as readable
by colleagues as the datasets are (``tempfile.mkstemp`` would create them ``0o600``).

**A full disk** is one place too, for every writer: :func:`check_free_space` refuses, before
anything is written, what would not fit the free space counted in whole blocks
(:func:`on_disk_bytes`), and :func:`reporting_disk_full` (or :func:`disk_full_error`) turns an
``ENOSPC`` / ``EDQUOT`` met while writing into a one-line :class:`DiskFullError` saying where and
about how much more space is needed, instead of an ``OSError`` traceback.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from an8flower.errors import DiskFullError

__all__ = ["TMP_SUFFIX", "atomic_writer", "atomic_write_bytes", "atomic_write", "is_temp_name", "DISK_FULL_ERRNOS", "format_bytes",
           "block_size", "free_bytes", "on_disk_bytes", "check_free_space", "disk_full_error", "reporting_disk_full"]

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


# --------------------------------------------------------------------------------------------
# a full disk

#: ``errno`` values of a write that found no room: the file system is full, or the user's quota is.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``"512 bytes"``, ``"276.9 KB"``, ``"1.2 GB"``."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _existing(path: str | os.PathLike[str]) -> Path:
    """``path`` or its nearest ancestor that exists (where a folder about to be created will live)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def block_size(path: str | os.PathLike[str]) -> int:
    """The allocation unit of the file system holding ``path``: ``max(f_frsize, st_blksize)``.

    A file of ``n`` bytes takes ``ceil(n / f_frsize)`` fragments of the free count ``f_bavail``
    (``statvfs(3)``); ``st_blksize`` (``stat(2)``) is the preferred I/O block, never smaller on the
    usual file systems. 4096 where neither can be read.
    """
    folder = _existing(path)
    sizes = [4096]
    try:
        sizes = [os.statvfs(folder).f_frsize, os.stat(folder).st_blksize]
    except (OSError, AttributeError):  # no statvfs on Windows
        pass
    return max(1, *sizes)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (or where it will be created),
    ``f_bavail * f_frsize`` as :func:`shutil.disk_usage` gives it; None when it cannot be read."""
    try:
        return int(shutil.disk_usage(_existing(path)).free)
    except OSError:
        return None


def on_disk_bytes(nbytes: int, nfiles: int, block: int) -> int:
    """An upper bound of the space ``nfiles`` files holding ``nbytes`` bytes in all take on disk.

    A file of ``n`` bytes occupies ``ceil(n / b)`` blocks of ``b`` bytes, and ``ceil(n / b) <=
    (n + b - 1) / b``; summed over the files, the block count is an integer at most
    ``(nbytes + nfiles * (b - 1)) / b``, so ``b * floor((nbytes + nfiles * (b - 1)) / b)`` bounds the
    space, and is reached (three files of 3-4 bytes: 3 blocks). A 3 MB dataset of 3,000 files of
    1 KB needs about 12 MB in 4 KiB blocks.
    """
    return (nbytes + nfiles * (block - 1)) // block * block


def check_free_space(path: str | os.PathLike[str], nbytes: int, nfiles: int, what: str) -> None:
    """Refuse, before anything is written, ``nbytes`` in ``nfiles`` files that would not fit.

    Args:
        path: where they will be written (a folder that may not exist yet).
        nbytes, nfiles: what is still to be written (an upper estimate).
        what: the start of the message, e.g. ``"output folder d: 108 images of 64 px"``.

    Raises:
        DiskFullError: :func:`on_disk_bytes` exceeds :func:`free_bytes` (nothing is checked when the
            free space cannot be read).
    """
    free = free_bytes(path)
    if free is None:
        return
    block = block_size(path)
    disk = on_disk_bytes(nbytes, nfiles, block)
    if disk > free:
        raise DiskFullError(f"{what} need about {format_bytes(nbytes)} more, but only {format_bytes(free)} are free "
                            f"there ({nfiles:,} files in whole {block:,}-byte blocks take about {format_bytes(disk)})")


def disk_full_error(where: str | os.PathLike[str], needed: int, exc: OSError | None = None) -> DiskFullError:
    """The one-line error for a disk that filled up while writing to ``where``.

    ``"WHERE: the disk is full (writing FILE): about X more is needed (N still to write, F free
    there)"``, where ``X = on_disk_bytes(needed) - F`` (at least one block).

    Args:
        where: the folder or file being written (the message starts with it).
        needed: about how many bytes the operation still has to write (what it leaves in place
            already counted as written).
        exc: the ``OSError`` met, for the file it names.
    """
    free = free_bytes(where) or 0
    block = block_size(where)
    more = max(on_disk_bytes(needed, 1, block) - free, block)
    at = f" (writing {exc.filename})" if exc is not None and exc.filename else ""
    return DiskFullError(f"{os.fspath(where)}: the disk is full{at}: about {format_bytes(more)} more is needed "
                         f"({format_bytes(needed)} still to write, {format_bytes(free)} free there)")


@contextmanager
def reporting_disk_full(where: str | os.PathLike[str], needed: Callable[[], int]) -> Iterator[None]:
    """``with reporting_disk_full(out, lambda: bytes_left):`` turns ``ENOSPC``/``EDQUOT`` into :func:`disk_full_error`.

    ``needed`` is called after the failure (once the caller's own clean-up inside the block has run),
    so it can count what is left to write then. Other errors pass through unchanged.
    """
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise disk_full_error(where, needed(), exc) from None


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` with :func:`atomic_writer`, creating its folder.

    A full disk raises :class:`DiskFullError` (:func:`reporting_disk_full`): one line naming ``path``
    and about how much more space it needs.
    """
    path = os.fspath(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with reporting_disk_full(path, lambda: len(payload)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_bytes(path, payload)
