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
import os
import struct
import zlib
from typing import Callable, Optional

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


def _read_bytes(path: str) -> bytes:
    """The content of ``path``, gunzipped when it is a gzip file (by magic bytes, not by name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"IDX file not found: {path}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetFormatError(f"corrupt or truncated gzip file {path}: {exc}") from exc
    if path.endswith(".gz"):
        raise DatasetFormatError(f"{path} has a .gz name but is not a gzip file (magic {raw[:2].hex()})")
    return raw


def read_idx(path: str | os.PathLike[str], expected_magic: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a native-byte-order numpy array.

    Args:
        path: the ``*-idx?-ubyte`` file, optionally ``.gz``.
        expected_magic: if given, the 4-byte big-endian magic number the file must start with
            (``0x00000803`` for MNIST images, ``0x00000801`` for labels).

    Returns:
        An array of shape ``dims`` (from the header) and the header's element type, in native
        byte order, writable.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetFormatError: wrong magic, unknown type code, a length that does not match the
            header (``expected N bytes, got M``), or a corrupt gzip stream; the message names the file.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DatasetFormatError(f"{path}: wrong magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(f"{path}: wrong magic 0x{magic:08x}, the first two bytes of an IDX file are zero")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise DatasetFormatError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetFormatError(f"{path}: truncated header, expected {header_len} bytes, got {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[type_code]
    expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetFormatError(
            f"{path}: expected {expected} bytes for dims {'x'.join(map(str, dims))} "
            f"of type {dtype.str[1:]}, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


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
        transform: Optional[Callable] = None,
        mask_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
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
