"""PNG files of a dataset: a small deterministic encoder, and a decoder back to sample arrays.

The encoder writes baseline PNG (W3C PNG specification, 2nd edition / ISO 15948): the signature,
``IHDR``, a ``PLTE`` for part maps, one ``IDAT`` and ``IEND``; no optional chunks (no time stamp,
gamma or text), no interlacing. Every row of an 8-bit image uses filter type 2 ("Up": each byte
minus the byte above it, modulo 256; the first row is filtered against a zero row), and the filtered
stream is compressed by :func:`zlib.compress` at :data:`PNG_COMPRESS_LEVEL`. The bytes are
therefore a function of the pixels and of the zlib build (the only part that may differ between
machines; see :mod:`an8flower.manifest` for the pixel hashes that do not). Filtering is one NumPy
subtraction and level 1 is zlib's fastest, which makes this about twice as fast as Pillow's
encoder, whose adaptive filtering tries five filters per row.

What is written, per kind:

* ``"image"``: RGB, 8 bits per channel (colour type 2);
* ``"mask"``: 1-bit greyscale (colour type 0, bit depth 1): 1 (white) = relevant pixel;
* ``"parts"``: 8-bit palette (colour type 3): the pixel value is the part id; the palette only
  colours the ids for viewing (:func:`part_palette`).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import numpy as np

from an8flower.errors import DatasetFormatError
from an8flower.untrusted import SAMPLE_MAX_PIXELS, open_image

__all__ = ["KINDS", "PNG_COMPRESS_LEVEL", "encode_png", "decode_png", "part_palette", "png_encoder_info", "max_png_bytes",
           "png_size"]

#: The three files of a sample.
KINDS: tuple[str, ...] = ("image", "mask", "parts")
#: zlib level of every PNG the package writes: the fastest, and fixed so the bytes are reproducible.
PNG_COMPRESS_LEVEL = 1

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BASE_PALETTE = (
    (0, 0, 0), (120, 120, 120), (120, 80, 40), (46, 160, 44), (250, 210, 40), (214, 39, 40),
    (31, 119, 180), (148, 103, 189), (227, 119, 194), (23, 190, 207), (188, 189, 34),
    (255, 152, 150), (197, 176, 213), (247, 182, 210), (140, 86, 75), (255, 255, 255),
)


def part_palette(n: int = 256) -> np.ndarray:
    """The display palette of part maps: uint8 (n, 3); id 0 (background) is black.

    Sixteen hand-picked colours, then a deterministic filler for specs with more parts.
    """
    i = np.arange(n)
    pal = np.stack([(i * 67) % 256, (i * 139) % 256, (i * 29) % 256], axis=1).astype(np.uint8)
    k = min(n, len(_BASE_PALETTE))
    pal[:k] = np.array(_BASE_PALETTE[:k], np.uint8)
    return pal


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _up_filtered(rows: np.ndarray) -> bytes:
    """Rows (H, bytes per row) uint8 -> the filtered stream: per row the byte 2, then row - row above."""
    h, n = rows.shape
    out = np.empty((h, n + 1), np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 wraps modulo 256, as PNG requires
    return out.tobytes()


def encode_png(array: np.ndarray, kind: str) -> bytes:
    """PNG bytes of a sample array.

    Args:
        array: uint8 (H, W, 3) for ``"image"``; bool (H, W) for ``"mask"``; uint8 (H, W) part ids
            for ``"parts"``.
        kind: ``"image"``, ``"mask"`` or ``"parts"``.

    Raises:
        ValueError: wrong kind, dtype or shape.
    """
    if kind == "image":
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image must be uint8 HxWx3, got {array.dtype} {array.shape}")
        h, w = array.shape[:2]
        header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        stream = _up_filtered(np.ascontiguousarray(array).reshape(h, w * 3))
        extra = b""
    elif kind == "mask":
        if array.ndim != 2:
            raise ValueError(f"mask must be HxW, got {array.shape}")
        h, w = array.shape
        header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
        packed = np.packbits(np.asarray(array).astype(bool, copy=False), axis=1)  # MSB first, as PNG
        stream = np.concatenate([np.zeros((h, 1), np.uint8), packed], axis=1).tobytes()  # filter 0
        extra = b""
    elif kind == "parts":
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(f"part map must be uint8 HxW, got {array.dtype} {array.shape}")
        h, w = array.shape
        header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
        n = max(16, int(array.max(initial=0)) + 1)
        extra = _chunk(b"PLTE", part_palette(n).tobytes())
        stream = _up_filtered(np.ascontiguousarray(array))
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if h == 0 or w == 0:
        raise ValueError(f"{kind} must not be empty, got shape {array.shape}")
    return b"".join((
        _SIGNATURE,
        _chunk(b"IHDR", header),
        extra,
        _chunk(b"IDAT", zlib.compress(stream, PNG_COMPRESS_LEVEL)),
        _chunk(b"IEND", b""),
    ))


def max_png_bytes(kind: str, side: int) -> int:
    """The largest file :func:`encode_png` writes for a ``side`` x ``side`` sample of ``kind``.

    The signature (8 bytes), ``IHDR`` (25), a ``PLTE`` of at most 256 entries (780), one ``IDAT``
    (12 + data) and ``IEND`` (12), where the data is at most zlib's ``compressBound`` of the
    filtered rows, ``n + n/4096 + n/16384 + n/2^25 + 13`` for ``n = side * (1 + row bytes)`` (a
    filter byte per row; 3 bytes a pixel for images, 1 for part maps, 1 bit for masks): deflate
    never grows data by more, whatever the zlib build. A file larger than this is not one of ours
    and is refused before it is read.
    """
    row = {"image": 3 * side, "mask": -(-side // 8), "parts": side}[kind]
    n = side * (1 + row)
    return 8 + 25 + 780 + 12 + (n + (n >> 12) + (n >> 14) + (n >> 25) + 13) + 12


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's ``IHDR`` (bytes 16-23), None when ``data`` is no PNG."""
    if len(data) < 24 or data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def decode_png(source: str | os.PathLike[str] | bytes, kind: str, size: int | None = None,
               max_pixels: int = SAMPLE_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """Read a sample file back as the array it was written from (decoded by Pillow).

    The header is checked before anything is decoded (:func:`an8flower.untrusted.open_image`): a
    file claiming more than ``max_pixels`` pixels, or another size than ``size`` x ``size``, is
    refused without being decoded.

    Args:
        source: the file's path or bytes. kind: ``"image"``, ``"mask"`` or ``"parts"``.
        size: the side the sample must have (``dataset.json``'s ``size``), or None for any size.
        max_pixels: the largest ``width * height`` decoded (default 512 x 512, the generator's
            largest sample).
        name: how the file is called in messages (default: its path, or ``"<bytes>"``).

    Returns uint8 (H, W, 3) for ``"image"``; bool (H, W) for ``"mask"`` (non-zero = relevant, so an
    8-bit mask reads correctly too); uint8 (H, W) part ids for ``"parts"``.

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: the file is not a readable image, is too large or of the wrong size,
            or a part map is not palette/greyscale; the message names the file.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    name = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    with open_image(source, max_pixels, None if size is None else (size, size), name) as img:
        if kind == "image":
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        if kind == "mask":
            return np.asarray(img if img.mode == "L" else img.convert("L")) > 0
        if img.mode not in ("P", "L"):
            raise DatasetFormatError(f"{name}: part map in mode {img.mode}, expected a palette or greyscale PNG")
        return np.asarray(img, dtype=np.uint8)


def png_encoder_info() -> dict[str, Any]:
    """The encoder and its settings, recorded in ``dataset.json``."""
    return {
        "encoder": "an8flower.png (baseline PNG, filter Up, one IDAT)",
        "zlib_version": zlib.ZLIB_RUNTIME_VERSION,
        "compress_level": PNG_COMPRESS_LEVEL,
    }
