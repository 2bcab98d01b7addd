"""Exceptions of the package.

Every error a user can cause by bad input derives from :class:`An8FlowerError` and names the file or
argument at fault in its message. The CLI prints such errors as one line and exits with status 2.
They also derive from the matching built-in (``ValueError``, ``FileNotFoundError``) so callers that
catch the built-ins keep working.
"""

from __future__ import annotations


class An8FlowerError(Exception):
    """Base class of the errors caused by bad input (arguments, spec files, dataset files)."""


class UsageError(An8FlowerError, ValueError):
    """A bad command-line or function argument."""


class SpecError(An8FlowerError, ValueError):
    """An invalid variant spec (unknown variant name, malformed or inconsistent spec file)."""


class DatasetFormatError(An8FlowerError, ValueError):
    """A dataset file that is missing, truncated or not in the expected format."""


class DatasetNotFoundError(An8FlowerError, FileNotFoundError):
    """A dataset file or folder that does not exist."""


class DiskFullError(UsageError, OSError):
    """The file system ran out of space (``ENOSPC``, ``EDQUOT``), or would not hold what is to be written.

    A :class:`UsageError` (the user chose where to write) and an ``OSError`` (as the error it replaces).

    The message says where and about how much more space is needed
    (:func:`an8flower.atomic.disk_full_error`).
    """
