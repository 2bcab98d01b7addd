"""The on-disk format: hashes, PNG encoding, atomic writes, the manifest, and verify."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
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
)
from an8flower.png import part_palette
from an8flower.verify import verify_dataset


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


def _chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    tags, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(tag + body)
        tags.append(tag)
        pos += 12 + length
    return tags


@pytest.mark.parametrize("kind, tags", [("image", [b"IHDR", b"IDAT", b"IEND"]), ("mask", [b"IHDR", b"IDAT", b"IEND"]),
                                        ("parts", [b"IHDR", b"PLTE", b"IDAT", b"IEND"])])
def test_png_chunks_are_baseline_only(arrays, kind, tags):
    """No optional chunks (no time stamp), valid CRCs."""
    assert _chunks(encode_png(arrays[kind], kind)) == tags


def test_png_decodes_with_an_independent_decoder(arrays):
    """OpenCV's libpng reads the same pixels: RGB (as BGR), 1-bit mask (as 0/255), palette (expanded)."""
    cv2 = pytest.importorskip("cv2")

    def read(kind):
        buf = np.frombuffer(encode_png(arrays[kind], kind), np.uint8)
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)

    np.testing.assert_array_equal(read("image")[:, :, ::-1], arrays["image"])
    np.testing.assert_array_equal(read("mask"), arrays["mask"].astype(np.uint8) * 255)
    np.testing.assert_array_equal(read("parts")[:, :, ::-1], part_palette()[arrays["parts"]])


@pytest.mark.parametrize("width", [1, 7, 8, 9, 17])
def test_mask_rows_pad_to_whole_bytes(width):
    mask = (np.arange(3 * width).reshape(3, width) % 3) == 0
    np.testing.assert_array_equal(decode_png(encode_png(mask, "mask"), "mask"), mask)


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
    (copy / "images" / "train" / "00-centre-red" / ".000000.png.1-ab.tmp").write_bytes(b"")
    report = verify_dataset(copy, progress=False)
    assert not report.ok and not report.inconsistent
    assert report.changed == [flipped]
    assert report.missing == [deleted]
    assert sorted(report.extra) == ["images/train/00-centre-red/.000000.png.1-ab.tmp", "images/val/notes.txt"]
    assert report.lines()[:2] == [f"missing: {deleted}", f"changed: {flipped}"]


def test_verify_detects_an_edited_manifest(copy):
    text = (copy / MANIFEST_NAME).read_text()
    edited = text.replace('""seed"":1', '""seed"":2', 1)  # a sampled parameter, CSV-quoted
    assert edited != text
    (copy / MANIFEST_NAME).write_text(edited)
    report = verify_dataset(copy, progress=False)
    assert report.changed == [f"{MANIFEST_NAME} (sha256 differs from {DATASET_JSON})",
                              f"{MANIFEST_NAME} (content sha256 differs from {DATASET_JSON})"]
    assert report.inconsistent == [
        f"{MANIFEST_NAME}, sample 0: meta seed 2 (plan: 1)",
        f"{MANIFEST_NAME}, sample 0: sampled parameters (meta) differ from the sample rendered again from "
        "dataset.json's spec and seed 1"]


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
    assert verify_dataset(copy, pixels=True, progress=False).changed == [
        row.files["image"], f"{row.files['image']} (pixels differ from the sample rendered again)"]


def test_verify_detects_a_changed_data_card(copy):
    info = json.loads((copy / DATASET_JSON).read_text())
    card = copy / info["data_card"]
    card.write_text(card.read_text() + "\nedited\n")
    assert verify_dataset(copy, progress=False).changed == [info["data_card"]]
    assert sha256_file(copy / MANIFEST_NAME) == info["manifest_sha256"]


# ------------------------------------------------------------------------------ data cards, Croissant


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_shipped_card_restates_the_spec(variant):
    """The card's spec tables are the spec's (else: run `python -m an8flower.datacard data_cards`)."""
    from importlib import resources

    from an8flower.datacard import BEGIN, END, card_name, spec_tables
    from an8flower.spec import load_spec

    text = (resources.files("an8flower.data_cards") / card_name(variant)).read_text(encoding="utf-8")
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == spec_tables(load_spec(variant)), "data card out of date: python -m an8flower.datacard data_cards"
    for heading in ("## Motivation", "## Composition", "## What the masks mean", "## Generation process",
                    "## Relation to the original release", "## Intended uses", "## Known limits", "## How to cite"):
        assert heading in text


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_shipped_croissant_template_is_current(variant):
    from importlib import resources

    from an8flower.croissant import croissant_metadata
    from an8flower.manifest import canonical_json
    from an8flower.spec import load_spec

    text = (resources.files("an8flower.data_cards") / f"an8flower-{variant}.croissant.json").read_text(encoding="utf-8")
    assert text == canonical_json(croissant_metadata(load_spec(variant), 1000, 0))


def _sources(node):
    if isinstance(node, dict):
        if "source" in node:
            yield node
        for v in node.values():
            yield from _sources(v)
    elif isinstance(node, list):
        for v in node:
            yield from _sources(v)


def test_generated_card_and_croissant(dataset):
    import re
    from importlib import resources

    info = json.loads((dataset / DATASET_JSON).read_text())
    shipped = (resources.files("an8flower.data_cards") / "an8flower-single-6c.md").read_text(encoding="utf-8")
    assert (dataset / info["data_card"]).read_text(encoding="utf-8") == shipped  # built-in at 64 px keeps its card
    meta = json.loads((dataset / info["croissant"]).read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0" and meta["@type"] == "sc:Dataset"
    manifest = [d for d in meta["distribution"] if d["@id"] == "manifest.csv"]
    assert manifest and manifest[0]["sha256"] == info["manifest_sha256"] == sha256_file(dataset / MANIFEST_NAME)
    ids = {d["@id"] for d in meta["distribution"]}
    rows = read_manifest(dataset / MANIFEST_NAME)
    columns = set(MANIFEST_COLUMNS)
    for field in _sources(meta["recordSet"]):
        src = field["source"]
        ref = src.get("fileSet", src.get("fileObject"))["@id"]
        assert ref in ids
        if "column" in src["extract"]:
            assert src["extract"]["column"] in columns
        if "transform" in src:  # the path regexes extract what the manifest says
            regex = re.compile(src["transform"]["regex"])
            kind = {"images": "image", "masks": "mask", "part_maps": "parts"}[ref]
            for r in rows:
                value = regex.match(r.files[kind]).group(1)
                expected = {"index": str(r.index).zfill(6), "split": r.split, "class": r.class_name,
                            "label": f"{r.label:02d}"}[field["name"]]
                assert value == expected
