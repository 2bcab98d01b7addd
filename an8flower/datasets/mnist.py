"""MNIST and Fashion-MNIST from their IDX files.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): bytes 0-1 are zero, byte 2 is
the element type, byte 3 the number of dimensions ``ndim``; then ``ndim`` big-endian uint32
sizes; then the data in C order, big-endian for multi-byte types. MNIST images have magic
``0x00000803`` (uint8, 3 dims: N x 28 x 28), labels ``0x00000801`` (uint8, 1 dim: N). The files
may be plain or gzipped (``.gz``), in ``root`` itself or in torchvision's ``root/MNIST/raw/``
(``root/FashionMNIST/raw/`` for Fashion-MNIST, whose files have the same names and format).

The paper (Oramas et al., ICLR 2019) explains a LeNet-style network trained on MNIST.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset, Item
from an8flower.datasets.files import check_split
from an8flower.errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "MNIST",
    "FashionMNIST",
    "read_idx",
    "find_idx_file",
    "IDX_DTYPES",
]

#: IDX element-type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

#: Split -> (images file, labels file) base names, without ``.gz``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_GZIP_MAGIC = b"\x1f\x8b"
#: Largest data size :func:`read_idx` reads by default: 1 GiB (MNIST's training images are 47 MB,
#: EMNIST's largest file 0.55 GB).
MAX_IDX_BYTES = 1 << 30
#: Deflate's largest compression ratio is about 1032:1 (RFC 1951: a 258-byte match costs at least
#: 2 bits); a gzip file of ``n`` bytes cannot decompress to more than this times ``n``.
_DEFLATE_MAX_RATIO = 1032
#: Decompressed bytes read per step.
_READ_CHUNK = 1 << 22


def _read_exact(stream, n: int, path: str, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DatasetFormatError(f"{path}: truncated {what}, expected {n} bytes, got {len(data)}")
    return data


def _open_idx(path: str):
    """The file opened for reading: its decompressed stream (gzip found by magic bytes, not by
    name), the raw file, and whether it is gzipped."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"IDX file not found: {path}") from exc
    magic = raw.read(2)
    raw.seek(0)
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw, True
    if path.endswith(".gz"):
        raw.close()
        raise DatasetFormatError(f"{path} has a .gz name but is not a gzip file (magic {magic.hex()})")
    return raw, raw, False


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None,
             max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a native-byte-order numpy array.

    The header is read first and fixes the data size ``prod(dims) * itemsize`` (exact integer
    arithmetic: dimensions whose product overflows 64 bits are simply too large). Nothing more
    than that is allocated or decompressed: a plain file must be exactly header + data bytes long
    (checked from its size before reading), a gzipped one is decompressed in chunks and stops at
    one byte past the data (a gzip bomb behind a small header costs one chunk). A size beyond
    ``max_bytes``, or beyond what the gzip file could hold (deflate compresses at most about
    1032:1), is refused before reading the data.

    Args:
        path: the ``*-idx?-ubyte`` file, optionally ``.gz``.
        expected_magic: if given, the 4-byte big-endian magic number the file must start with
            (``0x00000803`` for MNIST images, ``0x00000801`` for labels).
        max_bytes: the largest data size read (default :data:`MAX_IDX_BYTES`, 1 GiB).

    Returns:
        An array of shape ``dims`` (from the header) and the header's element type, in native
        byte order, writable.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetFormatError: wrong magic, unknown type code, a length that does not match the
            header (``expected N bytes, got M``), a size above ``max_bytes``, or a corrupt gzip
            stream; the message names the file.
    """
    path = os.fspath(path)
    stream, raw, gzipped = _open_idx(path)
    try:
        with raw, stream:
            return _parse_idx(stream, raw, gzipped, path, expected_magic, max_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"corrupt or truncated {'gzip ' if gzipped else ''}file {path}: {exc}") from exc


def _parse_idx(stream, raw, gzipped: bool, path: str, expected_magic: int | None, max_bytes: int) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4:
        raise DatasetFormatError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    (magic,) = struct.unpack(">I", head)
    if expected_magic is not None and magic != expected_magic:
        raise DatasetFormatError(f"{path}: wrong magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if head[0] != 0 or head[1] != 0:
        raise DatasetFormatError(f"{path}: wrong magic 0x{magic:08x}, the first two bytes of an IDX file are zero")
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_DTYPES:
        raise DatasetFormatError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, f"header ({header_len} bytes)"))
    dtype = IDX_DTYPES[type_code]
    n = math.prod(dims) * dtype.itemsize  # a Python int: no overflow
    shape = "x".join(map(str, dims))
    if not gzipped:
        size = os.fstat(raw.fileno()).st_size
        if size != header_len + n:
            raise DatasetFormatError(
                f"{path}: expected {header_len + n} bytes for dims {shape} of type {dtype.str[1:]}, got {size}")
    elif n > _DEFLATE_MAX_RATIO * os.fstat(raw.fileno()).st_size:
        raise DatasetFormatError(
            f"{path}: header declares dims {shape} of type {dtype.str[1:]} ({n} bytes), more than a gzip file "
            f"of {os.fstat(raw.fileno()).st_size} bytes can hold")
    if n > max_bytes:
        raise DatasetFormatError(f"{path}: header declares dims {shape} of type {dtype.str[1:]} ({n} bytes), "
                                 f"more than max_bytes={max_bytes}")
    data = np.empty(n, np.uint8)
    view, got = data.data, 0
    while got < n:
        k = stream.readinto(view[got:got + _READ_CHUNK])
        if not k:
            break
        got += k
    extra = stream.read(1) if got == n else b""
    if got != n or extra:
        found = f"{header_len + got}" if got < n else f"more than {header_len + n}"
        raise DatasetFormatError(
            f"{path}: expected {header_len + n} bytes for dims {shape} of type {dtype.str[1:]}, "
            f"got {found}{' (decompressed)' if gzipped else ''}")
    try:
        array = data.view(dtype).reshape(dims)
    except ValueError as exc:  # more dimensions than numpy supports
        raise DatasetFormatError(f"{path}: cannot hold dims {shape} in an array ({exc})") from None
    return array.astype(dtype.newbyteorder("="), copy=False)  # byte-swaps (a copy) only when needed


def find_idx_file(root: str, name: str, folder: str) -> str:
    """Locate IDX file ``name`` (plain or ``.gz``) in ``root`` or ``root/<folder>/raw``.

    The plain file is preferred over the ``.gz`` one when both exist.

    Raises:
        DatasetNotFoundError: none of the candidates exists; the message lists them.
    """
    candidates = [
        os.path.join(d, name + ext)
        for d in (root, os.path.join(root, folder, "raw"))
        for ext in ("", ".gz")
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DatasetNotFoundError(f"IDX file {name} not found; looked for: {', '.join(candidates)}")


class MNIST(ExplanationDataset):
    """MNIST digits from the IDX files, torchvision-style.

    Items are ``(image, label, None)``: with ``transform=None`` the image is a float32 tensor of
    shape (1, 28, 28) in [0, 1] (grey, one channel: unlike the colour datasets); otherwise
    ``transform`` receives a ``PIL.Image`` in mode ``"L"``. MNIST has no localisation masks.

    Args:
        root: folder holding the IDX files, or torchvision's root (files in ``root/MNIST/raw``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        transform: applied to the PIL image.
        mask_transform: unused (no masks); accepted for a uniform signature.

    Raises:
        UsageError: unknown ``split``.
        DatasetNotFoundError / DatasetFormatError: missing or malformed files (see :func:`read_idx`),
            image and label counts that differ, labels outside ``0..len(classes)-1``.
    """

    #: Sub-folder of torchvision's layout (``root/<folder>/raw``).
    folder = "MNIST"
    classes = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
               "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")
    has_masks = False

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(root, check_split(split, tuple(MNIST_FILES)), transform, mask_transform)
        images_name, labels_name = MNIST_FILES[split]
        self.images_file = find_idx_file(self.root, images_name, self.folder)
        self.labels_file = find_idx_file(self.root, labels_name, self.folder)
        images = read_idx(self.images_file, IMAGES_MAGIC)
        labels = read_idx(self.labels_file, LABELS_MAGIC)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DatasetFormatError(
                f"{self.images_file}: expected uint8 images N x rows x cols, got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DatasetFormatError(f"{self.labels_file}: expected uint8 labels of shape N, got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DatasetFormatError(
                f"mismatched counts: {len(images)} images in {self.images_file} but "
                f"{len(labels)} labels in {self.labels_file}"
            )
        if labels.size and int(labels.max()) >= len(self.classes):
            raise DatasetFormatError(
                f"{self.labels_file}: label {int(labels.max())} out of range 0..{len(self.classes) - 1}"
            )
        self.data: np.ndarray = images
        self.targets: np.ndarray = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Item:
        return self._finish(self.data[index], int(self.targets[index]), None)

    def extra_repr(self) -> str:
        return f"Images: {self.images_file}\nLabels: {self.labels_file}"


class FashionMNIST(MNIST):
    """Fashion-MNIST (Xiao et al., 2017): same IDX files and names as MNIST, 10 clothing classes.

    Looks in ``root`` or torchvision's ``root/FashionMNIST/raw``. See :class:`MNIST`.
    """

    folder = "FashionMNIST"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
