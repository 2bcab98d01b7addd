"""Reading files from elsewhere: paths that stay inside their folder, images with a pixel limit.

A downloaded dataset, a shared results folder or a user's image is untrusted input: a path read
from one of its listing files (a manifest row, a line of ``photos.txt``) must not reach outside the
folder it belongs to, and an image header must not make us allocate more than the use needs. The
helpers here are the one place those rules live; the loaders, ``verify``, ``show`` and ``explain``
call them.

**Paths.** :func:`resolve_inside` refuses, naming the listing and its row, a path that is empty,
absolute (``/x``, ``\\\\server\\x``, ``C:x``), holds a NUL byte, a backslash or a ``..`` component, or
that resolves (symbolic links followed, :func:`os.path.realpath`) to a place outside the root.

**Links inside.** ``resolve_inside(..., links=False)`` also refuses a path that passes through a
symbolic link at all, inside the folder or not: a folder ``generate`` writes holds none, and a
linked class folder would make torchvision's ``ImageFolder`` see another class.

**Bounded reads.** :func:`read_bounded` reads a file only when it is a regular file (not a device
such as ``/dev/zero``, a FIFO or, with ``O_NOFOLLOW``, a final symbolic link) whose size, from
``fstat`` before reading, is within a limit the caller derives from what the format allows; it
then reads at most that many bytes. :func:`parse_json` turns every way JSON text can fail
(syntax, encoding, nesting deep enough to exhaust the recursion limit) into the caller's error
class naming the file and field.

**Image pixel limits.** :func:`open_image` reads only the image header first (Pillow's
``Image.open`` decodes nothing), compares ``width x height`` with a limit, and decodes only when
the image is within it. A decoded RGB image costs 3 bytes per pixel, so the limit bounds the
memory one file can take whatever its compressed size (a 290 KB PNG may claim 100 Mpx, 300 MB
decoded). The limits, chosen per use:

* :data:`SAMPLE_MAX_PIXELS` = 512 x 512 (262,144 px): the largest an8Flower sample the generator
  writes; the dataset loaders check the exact size recorded in ``dataset.json`` as well;
* :data:`PHOTO_MAX_PIXELS` = 40,000,000 px (120 MB as RGB): photographs of ILSVRC12, Fashion144k,
  the original an8Flower release and a user's image given to ``explain``. ILSVRC12's largest images
  are about 10-20 Mpx; the loaders take ``max_pixels=`` to raise or lower it.

Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 px by default) also applies: its
``DecompressionBombWarning`` (above the guard) and ``DecompressionBombError`` (above twice the
guard) are both turned into :class:`DatasetFormatError` naming the file, so an image above Pillow's
guard is refused even when ``max_pixels`` is larger. (The warning is made an error with
``warnings.catch_warnings``, which changes the process's warning filters for the duration of the
``open`` call; Python's warning filters are not thread-local.)
"""

from __future__ import annotations

import io
import json
import ntpath
import os
import posixpath
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Union

from an8flower.errors import DatasetFormatError, DatasetNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image

__all__ = [
    "SAMPLE_MAX_PIXELS",
    "PHOTO_MAX_PIXELS",
    "check_relative_path",
    "resolve_inside",
    "read_bounded",
    "parse_json",
    "check_image_header",
    "open_image",
    "load_image",
]

#: Pixel limit of an an8Flower sample file: the generator's largest size, 512 x 512.
SAMPLE_MAX_PIXELS = 512 * 512
#: Pixel limit of a photograph (ILSVRC12, Fashion144k, original release, ``explain``'s input).
PHOTO_MAX_PIXELS = 40_000_000

Source = Union[str, "os.PathLike[str]", bytes]


def check_relative_path(relpath: str, what: str) -> str:
    """Check, without touching the file system, that ``relpath`` is a plain relative path.

    Args:
        relpath: the path as read from the listing (forward slashes).
        what: the listing and row, for the message (e.g. ``"manifest.csv, sample 7, column image"``).

    Returns:
        ``relpath`` unchanged.

    Raises:
        DatasetFormatError: empty, NUL byte, backslash, absolute (POSIX or Windows: a leading
            slash, a drive letter, a UNC share), a ``..`` component, or only ``.`` components (the
            folder itself); the message names ``what``.
    """
    problem = None
    if not isinstance(relpath, str) or not relpath:
        problem = "is empty"
    elif "\0" in relpath:
        problem = "holds a NUL byte"
    elif "\\" in relpath:
        problem = "holds a backslash (paths in listings use forward slashes)"
    elif posixpath.isabs(relpath) or ntpath.isabs(relpath) or ntpath.splitdrive(relpath)[0]:
        problem = "is absolute"
    elif ".." in relpath.split("/"):
        problem = "has a '..' component"
    elif all(part in ("", ".") for part in relpath.split("/")):
        problem = "names the folder itself, not a file in it"
    if problem is not None:
        raise DatasetFormatError(f"{what}: path {relpath!r} {problem}; it must stay inside its folder")
    return relpath


def resolve_inside(root: str | os.PathLike[str], relpath: str, what: str, *, links: bool = True) -> str:
    """``root/relpath`` after checking that it stays inside ``root``, symbolic links followed.

    Args:
        root: the folder the listing belongs to.
        relpath: the path as read from the listing (see :func:`check_relative_path`).
        what: the listing and row, for the message.
        links: whether the path may pass through symbolic links that stay inside ``root``; False
            for folders that hold none (an an8Flower dataset): then any link on the way is refused.

    Returns:
        The joined path (``os.path.join(root, relpath)``, not resolved: messages keep the user's
        spelling of ``root``).

    Raises:
        DatasetFormatError: :func:`check_relative_path` refuses it, or ``realpath(root/relpath)``
            lies outside ``realpath(root)`` (a symbolic link leading out of the folder).
    """
    check_relative_path(relpath, what)
    joined = os.path.join(os.fspath(root), *relpath.split("/"))
    real_root = os.path.realpath(root)
    real = os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise DatasetFormatError(f"{what}: path {relpath!r} resolves to {real}, outside {real_root} "
                                 "(a symbolic link leads out of the folder)")
    if not links and real != os.path.join(real_root, *[p for p in relpath.split("/") if p not in ("", ".")]):
        raise DatasetFormatError(f"{what}: path {relpath!r} passes through a symbolic link (it resolves to {real}); "
                                 "the folder must hold no links")
    return joined


def read_bounded(path: str | os.PathLike[str], limit: int, what: str, *, follow: bool = False) -> bytes:
    """The bytes of the regular file ``path``, refused unread when larger than ``limit``.

    The file is opened with ``O_NOFOLLOW`` (a final symbolic link is refused) and ``O_NONBLOCK``
    (a FIFO does not block the open); ``fstat`` must show a regular file of at most ``limit``
    bytes; then at most ``limit + 1`` bytes are read (a file that grew meanwhile is refused too).

    Args:
        path: the file. limit: the most bytes the format allows there.
        what: what the file is, for the message (e.g. ``"manifest"``).
        follow: follow a symbolic link (a file the user names, not one inside a dataset folder).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: naming the file: a symbolic link, not a regular file (a device, FIFO,
            folder), larger than ``limit``, unreadable.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{name}: {what} not found") from None
    except OSError as exc:
        if not follow and os.path.islink(name):
            raise DatasetFormatError(f"{name}: {what} is a symbolic link; a dataset folder holds none") from None
        raise DatasetFormatError(f"{name}: {what} not readable ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DatasetFormatError(f"{name}: {what} is not a regular file (a device, FIFO or folder); refused unread")
        if st.st_size > limit:
            raise DatasetFormatError(f"{name}: {what} is {st.st_size:,} bytes, more than the {limit:,} its format "
                                     "allows there; refused unread")
        chunks, left = [], limit + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        if left <= 0:
            raise DatasetFormatError(f"{name}: {what} grew past {limit:,} bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise DatasetFormatError(f"{name}: {what} not readable ({exc.strerror})") from None
    finally:
        os.close(fd)


def parse_json(data: bytes | str, what: str, error: type[Exception] = DatasetFormatError) -> Any:
    """``json.loads(data)`` with every failure as ``error(f"{what}: ...")``: invalid UTF-8 or JSON,
    numbers Python refuses (over 4,300 digits), or nesting deep enough to exhaust the recursion
    limit (``RecursionError``)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what}: not valid JSON ({exc})") from None


@contextmanager
def _checked_header(source: Source, max_pixels: int, size: tuple[int, int] | None,
                    name: str | None) -> Iterator[PIL.Image.Image]:
    """The opened, not yet decoded image, after the header checks of :func:`open_image`."""
    from PIL import Image, UnidentifiedImageError

    name = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"image file not found: {name}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetFormatError(f"{name}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{name}: not a readable image ({exc})") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise DatasetFormatError(f"{name}: {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
                                     "(max_pixels); refused before decoding")
        if size is not None and (w, h) != tuple(size):
            raise DatasetFormatError(f"{name}: image is {w}x{h}, expected {size[0]}x{size[1]}")
        yield img


def check_image_header(source: Source, max_pixels: int, size: tuple[int, int] | None = None,
                       name: str | None = None) -> tuple[int, int]:
    """The header checks of :func:`open_image`, without decoding: returns ``(width, height)``.

    For readers that pass the file on without decoding it (``export``).

    Raises:
        DatasetNotFoundError / DatasetFormatError: as :func:`open_image`, for the header.
    """
    with _checked_header(source, max_pixels, size, name) as img:
        return img.size


@contextmanager
def open_image(source: Source, max_pixels: int, size: tuple[int, int] | None = None,
               name: str | None = None) -> Iterator[PIL.Image.Image]:
    """Open an image, check its size from the header, then decode it (a context manager).

    ``with open_image(path, max_pixels) as img:`` gives a fully decoded ``PIL.Image.Image``, closed
    on exit. The header is read first; the image is decoded only when ``width * height <=
    max_pixels`` (and, if ``size`` is given, the header's size is exactly ``size``).

    Args:
        source: a path, or the file's bytes.
        max_pixels: the largest ``width * height`` accepted (see the module docstring).
        size: the exact ``(width, height)`` required, or None.
        name: how the file is called in messages (default: the path, or ``"<bytes>"``).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: naming the file: more pixels than ``max_pixels`` or than Pillow's
            decompression-bomb guard, another size than ``size``, not an image, truncated data.
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    with _checked_header(source, max_pixels, size, name) as img:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetFormatError(f"{name}: not a readable image ({exc})") from None
        yield img


def load_image(path: str | os.PathLike[str], mode: str = "RGB", max_pixels: int = PHOTO_MAX_PIXELS):
    """Decode an image file within a pixel limit and convert it to ``mode``.

    The function to read any image that comes from elsewhere (a dataset photo, a user's image).

    Args:
        path: the image file. mode: Pillow mode of the result (``"RGB"``, ``"L"``, ...).
        max_pixels: the largest ``width * height`` decoded (default :data:`PHOTO_MAX_PIXELS`).

    Returns:
        A decoded ``PIL.Image.Image`` in ``mode``, detached from the file.

    Raises:
        DatasetNotFoundError / DatasetFormatError: see :func:`open_image`.
    """
    with open_image(path, max_pixels) as img:
        return img.convert(mode) if img.mode != mode else img.copy()
