"""File helpers shared by the dataset loaders: image decoding, folder listing, split checks.

``load_image`` (re-exported from :mod:`an8flower.untrusted`) decodes within a pixel limit.

Every failure names the file at fault and raises an :mod:`an8flower.errors` exception, so a
loader never hands out a silently wrong or half-decoded sample.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError
from an8flower.untrusted import PHOTO_MAX_PIXELS, load_image, open_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "natural_key",
    "check_split",
    "require_dir",
    "require_file",
    "list_images",
    "list_subdirs",
    "load_image",
    "is_readable_image",
    "PHOTO_MAX_PIXELS",
]

#: File-name endings treated as images when a loader lists a folder (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """Whether ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``"class2" < "class10"``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def check_split(split: str, valid: Sequence[str], argument: str = "split") -> str:
    """Return ``split`` if it is one of ``valid``, else raise :class:`UsageError` naming both."""
    if split not in valid:
        raise UsageError(f"unknown {argument} {split!r}; valid values: {', '.join(map(repr, valid))}")
    return split


def require_dir(path: str, what: str) -> str:
    """Return ``path`` if it is a directory, else raise :class:`DatasetNotFoundError`."""
    if not os.path.isdir(path):
        raise DatasetNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: str, what: str) -> str:
    """Return ``path`` if it is a file, else raise :class:`DatasetNotFoundError`."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{what} not found: {path}")
    return path


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_images(folder: str) -> list[str]:
    """Names of the visible image files directly inside ``folder``, sorted (byte order of the names).

    Hidden files (names starting with ``.``, e.g. macOS's ``._x.JPEG`` resource forks) are skipped.
    """
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _visible(e.name) and e.is_file() and is_image_file(e.name))


def list_subdirs(folder: str) -> list[str]:
    """Names of the visible sub-folders of ``folder``, sorted: the class folders of a dataset root.

    As torchvision's ``find_classes``, names starting with ``.`` (``.git``, ``.ipynb_checkpoints``,
    ``.DS_Store`` folders) are not classes: counting one would shift every label by one. A
    sub-folder that is a symbolic link to ``folder`` itself or to one of its ancestors (a loop) is
    refused; other symbolic links are followed.

    Raises:
        DatasetFormatError: a symbolic-link loop, naming the link and where it leads.
    """
    real = os.path.realpath(folder)
    names = []
    with os.scandir(folder) as entries:
        for e in entries:
            if not _visible(e.name) or not e.is_dir():
                continue
            if e.is_symlink():
                target = os.path.realpath(e.path)
                if os.path.commonpath([target, real]) == target:
                    raise DatasetFormatError(f"{e.path}: symbolic link to {target}, a folder that contains it "
                                             "(a loop); remove the link")
            names.append(e.name)
    return sorted(names)


def is_readable_image(path: str, max_pixels: int = PHOTO_MAX_PIXELS) -> bool:
    """Whether :func:`load_image` would succeed on ``path`` (full decode, used by ``skip_broken``)."""
    try:
        with open_image(path, max_pixels):
            return True
    except (DatasetFormatError, DatasetNotFoundError):
        return False
