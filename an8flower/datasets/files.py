"""File helpers shared by the dataset loaders: image decoding, folder listing, split checks.

Every failure names the file at fault and raises an :mod:`an8flower.errors` exception, so a
loader never hands out a silently wrong or half-decoded sample.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

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


def list_images(folder: str) -> list[str]:
    """Names of the image files directly inside ``folder``, sorted (byte order of the names)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and is_image_file(e.name))


def list_subdirs(folder: str) -> list[str]:
    """Names of the sub-folders of ``folder``, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode``.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetFormatError: the file is not a decodable image (unknown format, truncated data).
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"unreadable image file {path}: {exc}") from exc


def is_readable_image(path: str) -> bool:
    """Whether :func:`load_image` would succeed on ``path`` (full decode, used by ``skip_broken``)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
