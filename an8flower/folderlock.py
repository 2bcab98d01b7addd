"""Advisory locks on an output folder, so that two ``generate`` runs cannot write one folder at once.

A lock is an ``flock(2)`` on a lock file (``fcntl.flock``: whole-file locks that belong to the open
file, so two opens in one process conflict too, and that the kernel drops when the holder dies,
even by ``SIGKILL``). Locks are taken without waiting: a folder in use is an error that names the
holder, read from the lock file (``process PID on HOST``), unless a caller asks to wait.

**No stale files.** The holder of an exclusive lock deletes the lock file when it releases it (a
shared holder does so when it can take the lock exclusively, i.e. when it is the last one). A
process that opened the file just before it was deleted may then lock the deleted file; so after
locking, :func:`acquire` checks that the path still names the file it locked (same device and
inode) and starts again if not. The lock files therefore exist only while a run holds them.

**Never through a link.** A lock file lies in a folder that may come from elsewhere (a shard
folder on a shared disk), so the lock path is opened with ``O_NOFOLLOW`` (a symbolic link planted
there is not followed: writing the holder text would overwrite the link's target) and
``O_NONBLOCK`` (a FIFO does not block), and what was opened must be a regular file with a single
link (a hard link would make the holder text overwrite another file). Anything else at the lock
path is refused, naming it: :func:`check_lock_path`.

Where ``fcntl`` is missing (Windows), or the file system does not implement ``flock`` (a
``RuntimeWarning`` says so), the functions do nothing: concurrent runs are not detected there. On NFS, ``flock`` is emulated with byte-range locks by the Linux client (since 2.6.12),
which works between machines that share the folder.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import warnings
from dataclasses import dataclass

from an8flower.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Lock", "acquire", "check_lock_path", "holder_text", "read_holder"]

#: ``flock`` errors of a file system that does not implement it (some FUSE and network mounts).
_UNSUPPORTED = {errno.ENOLCK, errno.EINVAL, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)}


#: How every holder text starts.
_HOLDER_PREFIX = "process "


def holder_text(detail: str = "") -> str:
    """What a holder writes into its lock file: ``process PID on HOST`` plus ``detail``."""
    return f"{_HOLDER_PREFIX}{os.getpid()} on {socket.gethostname()}" + (f" ({detail})" if detail else "")


#: ``os.open`` flags of every open of a lock file: never through a symbolic link, never blocking on a FIFO.
_OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _not_a_lock_file(st: os.stat_result) -> str:
    """Why a file with status ``st`` (``lstat``/``fstat``) is not a lock file of ours, or ``""``."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"a file with {st.st_nlink} hard links"
    return ""


def check_lock_path(path: str | os.PathLike[str], what: str) -> None:
    """Refuse anything but a missing path or a plain lock file at ``path``, without following links.

    A plain lock file is a regular file with one link, empty or holding a holder text
    (:func:`holder_text`: ``process PID on HOST``), so that an unrelated file of that name is not
    taken for one (and truncated).

    Raises:
        UsageError: ``"{what}: {path} is a symbolic link, not a lock file an8flower writes; remove it"``
            (or a folder, FIFO, device, a file with other hard links, or a file with other content).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    why = _not_a_lock_file(st)
    if not why and st.st_size:
        text = read_holder(path)
        if not text.startswith(_HOLDER_PREFIX):
            why = f"a file holding {text[:40]!r}"
    if why:
        raise UsageError(f"{what}: {os.fspath(path)} is {why}, not a lock file an8flower writes; remove it")


def read_holder(path: str | os.PathLike[str]) -> str:
    """The holder text of a lock file, or ``""`` when there is none (or the path is no plain lock file)."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return ""
    try:
        if _not_a_lock_file(os.fstat(fd)):
            return ""
        return os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


@dataclass
class Lock:
    """A held lock (see :func:`acquire`); :meth:`release` it, or use it as a context manager."""

    path: str
    fd: int | None
    shared: bool

    def upgrade(self) -> bool:
        """Wait until the lock is exclusive (every other shared holder gone).

        ``flock`` converts by dropping the shared lock first, so two holders upgrading at once do
        not deadlock: one gets it, the other waits. Returns whether the path still names the locked
        file; False means a holder released and deleted it meanwhile (the caller takes a fresh lock).
        """
        if self.fd is None:
            return True
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.shared = False
        return _same_file(self.fd, self.path)

    def release(self) -> None:
        """Unlock; delete the lock file when no one else holds it (see the module docstring)."""
        if self.fd is None:
            return
        try:
            exclusive = not self.shared
            if not exclusive:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    exclusive = True
                except BlockingIOError:
                    pass
            if exclusive and _same_file(self.fd, self.path):
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str | os.PathLike[str], what: str, *, shared: bool = False, wait: bool = False,
            holder: str = "") -> Lock:
    """Lock ``path`` (created if missing), exclusively or shared.

    Args:
        path: the lock file; its folder must exist.
        what: names the locked thing in the error (e.g. ``"output folder data/s6"``).
        shared: take a shared lock (many shared holders may coexist; an exclusive lock excludes all).
        wait: block until the lock is free instead of failing.
        holder: the text an exclusive holder writes into the file (default :func:`holder_text`; it
            starts as :func:`holder_text` does, ``process PID``, or :func:`check_lock_path` refuses the file).

    Returns:
        The held :class:`Lock`.

    Raises:
        UsageError: the lock is held (without ``wait``): ``"{what}: in use by process PID on HOST"``
            (or ``"by another process"`` when the holder left no text), the lock file cannot be
            created, or the lock path holds something else: a symbolic link, a folder, a FIFO, a
            file with other hard links (:func:`check_lock_path`; nothing is written to it).
    """
    path = os.fspath(path)
    if fcntl is None:  # pragma: no cover - Windows
        return Lock(path, None, shared)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        check_lock_path(path, what)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link planted after the check above
                check_lock_path(path, what)
            raise UsageError(f"{what}: cannot create lock file {path} ({exc.strerror})") from None
        why = _not_a_lock_file(os.fstat(fd))
        if why:
            os.close(fd)
            raise UsageError(f"{what}: {path} is {why}, not a lock file an8flower writes; remove it")
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except OSError as exc:
            text = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UsageError(f"{what}: in use by {text or 'another process'}") from None
            if exc.errno in _UNSUPPORTED:  # a file system without flock: go on unlocked, say so
                if not text:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                warnings.warn(f"{what}: the file system does not support locks ({exc.strerror}); concurrent runs "
                              "on it are not detected", RuntimeWarning, stacklevel=2)
                return Lock(path, None, shared)
            raise UsageError(f"{what}: cannot lock {path} ({exc.strerror})") from None
        if not _same_file(fd, path):  # deleted by its last holder while we waited: start again
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        if not shared:
            os.pwrite(fd, ((holder or holder_text()) + "\n").encode("utf-8"), 0)
        return Lock(path, fd, shared)
