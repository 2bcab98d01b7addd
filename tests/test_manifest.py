"""The on-disk format: hashes, PNG encoding, atomic writes, the manifest, and verify."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from an8flower.errors import DatasetFormatError, DatasetNotFoundError
from an8flower.generate import generate
from an8flower.manifest import (
    DATASET_JSON,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    ManifestRow,
    atomic_write_bytes,
    content_sha256,
    decode_png,
    encode_png,
    is_temp_name,
    manifest_bytes,
    pixel_sha256,
    read_dataset_json,
    read_manifest,
    sha256_file,
    verify_dataset,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m") / "ds"
    generate("single-6c", root, size=64, per_class=3, seed=1, workers=1, progress=False)
    return root


@pytest.fixture()
def copy(dataset, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


# ------------------------------------------------------------------------------ hashing


def test_pixel_sha256_hand_computed():
    a = np.array([[1, 2], [3, 250]], dtype=np.uint8)
    assert pixel_sha256(a) == hashlib.sha256(b"|u1 2x2\n" + bytes([1, 2, 3, 250])).hexdigest()
    rgb = np.zeros((1, 2, 3), np.uint8)
    assert pixel_sha256(rgb) == hashlib.sha256(b"|u1 1x2x3\n" + bytes(6)).hexdigest()


def test_pixel_sha256_bool_is_canonical():
    m = np.array([True, False, True])
    odd = np.array([255, 0, 7], np.uint8).view(bool)  # True stored as other bytes
    assert pixel_sha256(odd) == pixel_sha256(m) == hashlib.sha256(b"|b1 3\n" + bytes([1, 0, 1])).hexdigest()
    assert pixel_sha256(m) != pixel_sha256(m.astype(np.uint8))  # dtype is part of the hash


def test_pixel_sha256_ignores_memory_layout():
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert pixel_sha256(np.asfortranarray(a)) == pixel_sha256(a)


# ------------------------------------------------------------------------------ PNG


@pytest.fixture()
def arrays():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    mask = rng.random((17, 23)) > 0.6
    parts = rng.integers(0, 6, (17, 23), dtype=np.uint8)
    return {"image": image, "mask": mask, "parts": parts}


@pytest.mark.parametrize("kind, mode", [("image", "RGB"), ("mask", "1"), ("parts", "P")])
def test_png_round_trip_and_modes(arrays, kind, mode):
    data = encode_png(arrays[kind], kind)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.mode == mode and img.size == (23, 17)
    back = decode_png(data, kind)
    np.testing.assert_array_equal(back, arrays[kind])
    assert back.dtype == (bool if kind == "mask" else np.uint8)
    assert pixel_sha256(back) == pixel_sha256(arrays[kind])
    assert encode_png(arrays[kind], kind) == data  # deterministic bytes


def test_mask_png_white_is_relevant(arrays):
    """1 (white, 255 when read as greyscale) marks the relevant pixels."""
    grey = np.asarray(Image.open(io.BytesIO(encode_png(arrays["mask"], "mask"))).convert("L"))
    np.testing.assert_array_equal(grey == 255, arrays["mask"])
    np.testing.assert_array_equal(grey == 0, ~arrays["mask"])


def test_encode_rejects_wrong_arrays():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint8), "image")
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.int32), "parts")
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint8), "heatmap")


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_temp_names_are_recognised(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (seen.append(os.path.basename(s)), real_replace(s, d)))
    atomic_write_bytes(tmp_path / "x.png", b"data")
    assert len(seen) == 1 and is_temp_name(seen[0]) and not is_temp_name("x.png")


# ------------------------------------------------------------------------------ manifest


def _row(index: int, meta=None) -> ManifestRow:
    files = {k: f"{k}s/train/a/{index:06d}.png" for k in ("image", "mask", "parts")}
    return ManifestRow(index, "train", "a", 0, files, {k: "0" * 64 for k in files},
                       {k: "1" * 64 for k in files}, meta if meta is not None else {"x": 0.5, "name": "é, \"q\""})


def test_manifest_round_trip(tmp_path):
    rows = [_row(1), _row(0, {"nested": [1, 2, {"k": None}]})]
    data = manifest_bytes(rows)
    assert data.splitlines()[0].decode() == ",".join(MANIFEST_COLUMNS)
    assert data.endswith(b"\n") and b"\r" not in data
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(data)
    back = read_manifest(path)
    assert [r.index for r in back] == [0, 1]  # written in index order
    assert back == sorted(rows, key=lambda r: r.index)


def test_content_hash_ignores_file_byte_hashes_only():
    rows = [_row(0), _row(1)]
    recompressed = [ManifestRow(r.index, r.split, r.class_name, r.label, r.files, {k: "f" * 64 for k in r.files},
                                r.pixels_sha256, r.meta) for r in rows]
    assert content_sha256(recompressed) == content_sha256(rows)
    assert manifest_bytes(recompressed) != manifest_bytes(rows)
    changed_pixels = [ManifestRow(0, "train", "a", 0, rows[0].files, rows[0].sha256,
                                  {**rows[0].pixels_sha256, "mask": "2" * 64}, rows[0].meta), rows[1]]
    assert content_sha256(changed_pixels) != content_sha256(rows)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="missing.csv"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("index,split\n0,train\n")
    with pytest.raises(DatasetFormatError, match="bad.csv.*header"):
        read_manifest(bad)
    lines = manifest_bytes([_row(0)]).decode().splitlines()
    bad.write_text(lines[0] + "\n" + lines[1].replace("0,train", "zero,train", 1) + "\n")
    with pytest.raises(DatasetFormatError, match="line 2"):
        read_manifest(bad)


def test_read_dataset_json_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such dataset folder"):
        read_dataset_json(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="dataset.json is missing"):
        read_dataset_json(tmp_path)
    (tmp_path / DATASET_JSON).write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_dataset_json(tmp_path)
    (tmp_path / DATASET_JSON).write_text('{"format": "something-else"}')
    with pytest.raises(DatasetFormatError, match="format"):
        read_dataset_json(tmp_path)


# ------------------------------------------------------------------------------ verify


def test_verify_clean_dataset(dataset):
    report = verify_dataset(dataset, progress=False)
    assert report.ok and report.checked == 3 * 6 * 3
    assert verify_dataset(dataset, pixels=True, progress=False).ok


def test_verify_names_every_problem(copy):
    rows = read_manifest(copy / MANIFEST_NAME)
    flipped, deleted = rows[0].files["image"], rows[5].files["mask"]
    data = bytearray((copy / flipped).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / flipped).write_bytes(bytes(data))
    (copy / deleted).unlink()
    (copy / "images" / "val" / "notes.txt").write_text("extra")
    (copy / "images" / "train" / "centre-red" / ".000000.png.1-ab.tmp").write_bytes(b"")
    report = verify_dataset(copy, progress=False)
    assert not report.ok
    assert report.changed == [flipped]
    assert report.missing == [deleted]
    assert sorted(report.extra) == ["images/train/centre-red/.000000.png.1-ab.tmp", "images/val/notes.txt"]
    assert report.lines()[:2] == [f"missing: {deleted}", f"changed: {flipped}"]


def test_verify_detects_an_edited_manifest(copy):
    text = (copy / MANIFEST_NAME).read_text()
    edited = text.replace('""seed"":1', '""seed"":2', 1)  # a sampled parameter, CSV-quoted
    assert edited != text
    (copy / MANIFEST_NAME).write_text(edited)
    report = verify_dataset(copy, progress=False)
    assert report.changed == [f"{MANIFEST_NAME} (sha256 differs from {DATASET_JSON})"]


def test_verify_pixels_accepts_recompressed_copy(copy):
    """Same pixels, other zlib output: byte check flags it, pixel check accepts it."""
    row = read_manifest(copy / MANIFEST_NAME)[2]
    path = copy / row.files["image"]
    with Image.open(path) as img:
        img.load()
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=9)
    assert buf.getvalue() != path.read_bytes()
    path.write_bytes(buf.getvalue())
    assert verify_dataset(copy, progress=False).changed == [row.files["image"]]
    assert verify_dataset(copy, pixels=True, progress=False).ok
    # ... but a changed pixel is caught by both
    image = decode_png(path, "image").copy()
    image[0, 0, 0] ^= 1
    path.write_bytes(encode_png(image, "image"))
    assert verify_dataset(copy, pixels=True, progress=False).changed == [row.files["image"]]


def test_verify_detects_a_changed_data_card(copy):
    info = json.loads((copy / DATASET_JSON).read_text())
    card = copy / info["data_card"]
    card.write_text(card.read_text() + "\nedited\n")
    assert verify_dataset(copy, progress=False).changed == [info["data_card"]]
    assert sha256_file(copy / MANIFEST_NAME) == info["manifest_sha256"]
