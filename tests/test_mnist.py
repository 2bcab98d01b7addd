"""MNIST / Fashion-MNIST loader on IDX files written byte by byte by the tests."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from an8flower.datasets.mnist import MNIST, FashionMNIST, read_idx
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

BE_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(BE_DTYPES[type_code]).tobytes()


def write(path, payload: bytes, gz: bool = False) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return path


def make_split(rng, n: int):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 255, 0
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_mnist(folder, images, labels, prefix="train", gz=False) -> None:
    suffix = ".gz" if gz else ""
    write(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), idx_bytes(images), gz)
    write(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), idx_bytes(labels), gz)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    return make_split(rng, 7), make_split(rng, 3)


# ------------------------------------------------------------------------------- read_idx


def test_read_idx_hand_written_int16_big_endian(tmp_path):
    # type 0x0B (int16), 1 dim of 3: values 1, -2, 258 as big-endian bytes.
    raw = b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x03" + b"\x00\x01" + b"\xff\xfe" + b"\x01\x02"
    out = read_idx(write(tmp_path / "a.idx", raw))
    assert out.dtype == np.int16 and out.dtype.isnative
    assert out.tolist() == [1, -2, 258]


@pytest.mark.parametrize("code", sorted(BE_DTYPES))
def test_read_idx_every_type_roundtrips(tmp_path, code):
    values = np.array([[0, 1, 2], [3, 4, 5]]) * (-1 if code in (0x09, 0x0B, 0x0C) else 1)
    if code in (0x0D, 0x0E):
        values = values + 0.25
    out = read_idx(write(tmp_path / "b.idx", idx_bytes(values, code)))
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, values.astype(BE_DTYPES[code]))
    assert out.flags.writeable


def test_read_idx_gz_detected_by_content(tmp_path):
    raw = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    np.testing.assert_array_equal(read_idx(write(tmp_path / "x.gz", raw, gz=True)), [[0, 1, 2], [3, 4, 5]])
    # a gzip stream under a plain name is read too (detected by the 1f 8b magic)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "x-plain", raw, gz=True)), [[0, 1, 2], [3, 4, 5]])


def test_read_idx_wrong_magic_names_file(tmp_path):
    path = write(tmp_path / "labels", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetFormatError, match=r"wrong magic 0x00000801, expected 0x00000803") as e:
        read_idx(path, expected_magic=0x00000803)
    assert "labels" in str(e.value)
    bad = write(tmp_path / "notidx", b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetFormatError, match="notidx"):
        read_idx(bad)


def test_read_idx_unknown_type_code(tmp_path):
    path = write(tmp_path / "weird", b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetFormatError, match=r"weird.*type 0x07"):
        read_idx(path)


def test_read_idx_truncated_data_reports_lengths(tmp_path):
    raw = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    path = write(tmp_path / "train-images-idx3-ubyte", raw[:-10])
    with pytest.raises(DatasetFormatError) as e:
        read_idx(path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and f"expected {16 + 2 * 784} bytes" in msg and f"got {16 + 2 * 784 - 10}" in msg
    # trailing garbage is a length mismatch too
    with pytest.raises(DatasetFormatError, match="expected"):
        read_idx(write(tmp_path / "long", raw + b"\x00"))
    # header cut inside the dimensions
    with pytest.raises(DatasetFormatError, match=r"short\-header|truncated header"):
        read_idx(write(tmp_path / "short-header", raw[:10]))


def test_read_idx_truncated_gzip_names_file(tmp_path):
    path = write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(50, np.uint8)), gz=True)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------- datasets


def test_plain_gz_and_torchvision_layout_agree(tmp_path, data):
    (train_x, train_y), (test_x, test_y) = data
    write_mnist(tmp_path / "plain", train_x, train_y)
    write_mnist(tmp_path / "gz", train_x, train_y, gz=True)
    write_mnist(tmp_path / "tv" / "MNIST" / "raw", train_x, train_y, gz=True)
    for root in ("plain", "gz", "tv"):
        ds = MNIST(tmp_path / root, split="train")
        np.testing.assert_array_equal(ds.data, train_x)
        np.testing.assert_array_equal(ds.targets, train_y)
        assert len(ds) == 7
    assert MNIST(tmp_path / "gz").images_file.endswith(".gz")


def test_items_are_grey_unit_range_without_mask(tmp_path, data):
    (train_x, train_y), (test_x, test_y) = data
    write_mnist(tmp_path, test_x, test_y, prefix="t10k")
    ds = MNIST(tmp_path, split="test")
    image, label, mask = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert image[0, 0, 0].item() == 1.0 and image[0, 0, 1].item() == 0.0
    torch.testing.assert_close(image[0], torch.from_numpy(test_x[0]).float() / 255)
    assert label == int(test_y[0]) and isinstance(label, int)
    assert mask is None and ds.has_masks is False
    seen = []
    ds_t = MNIST(tmp_path, split="test", transform=lambda im: seen.append(im.mode) or np.asarray(im))
    out, _, _ = ds_t[2]
    assert seen == ["L"] and np.array_equal(out, test_x[2])
    assert "Split: test" in repr(ds) and "Number of datapoints: 3" in repr(ds)


def test_fashion_mnist_layout_and_classes(tmp_path, data):
    (train_x, train_y), _ = data
    write_mnist(tmp_path / "FashionMNIST" / "raw", train_x, train_y)
    ds = FashionMNIST(tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    np.testing.assert_array_equal(ds.data, train_x)
    with pytest.raises(DatasetNotFoundError):  # FashionMNIST/raw is not MNIST/raw
        MNIST(tmp_path)


def test_mismatched_counts_name_both_files(tmp_path, data):
    (train_x, train_y), _ = data
    write_mnist(tmp_path, train_x, train_y[:5])
    with pytest.raises(DatasetFormatError) as e:
        MNIST(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and "train-labels-idx1-ubyte" in str(e.value)
    assert "7 images" in str(e.value) and "5 labels" in str(e.value)


def test_swapped_files_give_wrong_magic(tmp_path, data):
    (train_x, train_y), _ = data
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(train_y))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(train_x))
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte: wrong magic 0x00000801"):
        MNIST(tmp_path)


def test_label_out_of_range(tmp_path, data):
    (train_x, train_y), _ = data
    labels = train_y.copy()
    labels[3] = 10
    write_mnist(tmp_path, train_x, labels)
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte: label 10 out of range"):
        MNIST(tmp_path)


def test_missing_files_listed(tmp_path, data):
    (train_x, train_y), _ = data
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(train_x))
    with pytest.raises(DatasetNotFoundError) as e:
        MNIST(tmp_path)
    assert "train-labels-idx1-ubyte" in str(e.value) and os.path.join("MNIST", "raw") in str(e.value)


def test_unknown_split(tmp_path):
    with pytest.raises(UsageError, match=r"split 'validation'.*'train', 'test'"):
        MNIST(tmp_path, split="validation")
