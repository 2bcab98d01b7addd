"""an8flower export: Parquet and WebDataset shards read back through the real libraries.

The source is a real generated folder; the exports are read by ``datasets.load_dataset`` (offline,
sockets blocked), by ``pyarrow`` and by ``webdataset.WebDataset``, and compared with the
``An8Flower`` loader's items exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from an8flower.cli import main
from an8flower.datasets.generated import An8Flower
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError
from an8flower.export import EXPORT_MANIFEST, export_dataset, hf_features, sample_record
from an8flower.generate import generate
from an8flower.layout import SPLITS
from an8flower.manifest import (
    DATASET_JSON,
    MANIFEST_NAME,
    ManifestRow,
    canonical_json,
    content_sha256,
    manifest_bytes,
    read_dataset_json,
    read_manifest,
    sha256_bytes,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SHARD = 4  # 6 rows per split -> shards of 4 and 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export") / "ds"
    generate("single-6c", root, size=64, per_class=3, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def parquet_out(dataset) -> Path:
    out = dataset.parent / "parquet"
    export_dataset(dataset, out, "parquet", shard_size=SHARD, progress=False)
    return out


@pytest.fixture(scope="module")
def wds_out(dataset) -> Path:
    out = dataset.parent / "wds"
    export_dataset(dataset, out, "webdataset", shard_size=SHARD, progress=False)
    return out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hugging Face offline and every socket connection refused: nothing may reach the network."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self, address, *args):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return datasets


def loader_arrays(root: Path, split: str):
    """(index, label, image uint8 HxWx3, mask bool, parts uint8) of every item of the loader."""
    ds = An8Flower(root, split=split, return_parts=True)
    out = []
    for i in range(len(ds)):
        image, label, mask, parts = ds[i]
        image = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        out.append((ds.sample_index(i), label, image, mask.numpy(), parts.numpy()))
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(card: Path) -> dict:
    import yaml

    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def shards_of(out: Path, split: str, pattern: str) -> list[str]:
    return sorted(str(p) for p in out.glob(pattern.format(split=split)))


# ------------------------------------------------------------------------------ Parquet


def test_parquet_round_trips_through_datasets(offline, dataset, parquet_out, tmp_path):
    datasets = offline
    info = read_dataset_json(dataset)
    files = {s: shards_of(parquet_out, s, "data/{split}-*.parquet") for s in SPLITS}
    assert [len(files[s]) for s in SPLITS] == [2, 2, 2]  # 6 rows per split, 4 per shard
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    for split in SPLITS:
        features = ds[split].features
        for kind in ("image", "mask", "parts"):
            assert features[kind] == datasets.Image()
        assert features["label"] == datasets.ClassLabel(names=info["classes"])
        assert features["index"] == datasets.Value("int64") and features["meta"] == datasets.Value("string")
        expected = loader_arrays(dataset, split)
        assert ds[split].num_rows == len(expected)
        for row, (index, label, image, mask, parts) in zip(ds[split], expected, strict=True):
            assert (row["index"], row["label"], row["split"]) == (index, label, split)
            assert row["class"] == info["classes"][label]
            assert np.array_equal(np.asarray(row["image"]), image)
            got_mask = np.asarray(row["mask"])
            assert got_mask.dtype == np.bool_ and np.array_equal(got_mask, mask)
            assert np.array_equal(np.asarray(row["parts"]), parts)


def test_parquet_card_is_read_by_datasets(offline, dataset, parquet_out, tmp_path):
    """load_dataset(OUT) reads the card's configs and dataset_info; its YAML is the library's own form."""
    datasets = offline
    info = read_dataset_json(dataset)
    header = front_matter(parquet_out / "README.md")
    features = datasets.Features.from_dict(hf_features(info["classes"]))
    assert header["dataset_info"]["features"] == features._to_yaml_list()
    assert header["license"] == "mit" and "image-classification" in header["task_categories"]
    listed = [p for entry in header["configs"][0]["data_files"] for p in entry["path"]]
    assert sorted(listed) == sorted(str(p.relative_to(parquet_out)) for p in parquet_out.glob("data/*.parquet"))
    ds = datasets.load_dataset(str(parquet_out), cache_dir=str(tmp_path / "cache"), verification_mode="all_checks")
    assert list(ds) == list(SPLITS)
    splits = {s["name"]: s for s in header["dataset_info"]["splits"]}
    for split in SPLITS:
        assert ds[split].features == features
        assert ds[split].num_rows == splits[split]["num_examples"] == 6
        assert ds[split].data.nbytes == splits[split]["num_bytes"]
    card = (parquet_out / "README.md").read_text(encoding="utf-8")
    assert info["manifest_sha256"] in card and "@inproceedings{oramas2019visual" in card
    assert (dataset / "DATACARD.md").read_text(encoding="utf-8").rstrip("\n") in card


def test_parquet_metadata_keeps_the_hashes_and_the_features(offline, dataset, parquet_out):
    datasets = offline
    info = read_dataset_json(dataset)
    reference = datasets.Features({
        "index": datasets.Value("int64"), "split": datasets.Value("string"), "class": datasets.Value("string"),
        "label": datasets.ClassLabel(names=info["classes"]),
        **{k: datasets.Image() for k in ("image", "mask", "parts")},
        **{f"{k}{h}": datasets.Value("string") for h in ("_sha256", "_pixels_sha256") for k in ("image", "mask", "parts")},
        "meta": datasets.Value("string"),
    })
    for path in parquet_out.glob("data/*.parquet"):
        schema = pq.read_schema(path)
        assert datasets.Features.from_arrow_schema(schema) == reference
        assert schema.remove_metadata() == reference.arrow_schema.remove_metadata()
        meta = json.loads(schema.metadata[b"an8flower"])
        assert meta["manifest_sha256"] == info["manifest_sha256"]
        assert meta["content_sha256"] == info["content_sha256"]
        assert meta["exporter_version"] == info["an8flower_version"]
        assert path.name.startswith(meta["split"]) and f"{meta['shard']:05d}-of-{meta['shards']:05d}" in path.name
        assert pq.ParquetFile(path).metadata.row_group(0).num_rows == meta["rows"]


def rebuilt_manifest(records: list[dict]) -> bytes:
    rows = [ManifestRow.from_record({k: v if isinstance(v, str) else str(v) for k, v in r.items()}) for r in records]
    return manifest_bytes(rows)


def test_parquet_rows_rebuild_the_manifest(dataset, parquet_out):
    """Every manifest column is there: the rows rebuild manifest.csv byte for byte, and the PNGs are the files."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted(parquet_out.glob("data/*.parquet"))])
    records = table.to_pylist()
    for r in records:
        for kind in ("image", "mask", "parts"):
            assert r[kind]["bytes"] == (dataset / r[kind]["path"]).read_bytes()
            r[kind] = r[kind]["path"]
    assert rebuilt_manifest(records) == (dataset / MANIFEST_NAME).read_bytes()


# ------------------------------------------------------------------------------ WebDataset


def png_as_stored(key: str, data: bytes):
    """A webdataset handler: PNG members as PIL opens them (no conversion to RGB, unlike "pil")."""
    from PIL import Image

    if not key.endswith(".png"):
        return None
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_webdataset_round_trips_through_webdataset(dataset, wds_out):
    wds = pytest.importorskip("webdataset")
    for split in SPLITS:
        urls = shards_of(wds_out, split, "{split}-*.tar")
        assert [Path(u).name for u in urls] == [f"{split}-000000.tar", f"{split}-000001.tar"]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(png_as_stored))
        expected = loader_arrays(dataset, split)
        assert len(samples) == len(expected)
        rows = {r.index: r for r in read_manifest(dataset / MANIFEST_NAME)}
        for sample, (index, label, image, mask, parts) in zip(samples, expected, strict=True):
            assert sample["__key__"] == f"{index:06d}"
            assert sample["cls"] == label
            assert sample["json"] == {**sample_record(rows[index]), "meta": dict(rows[index].meta)}
            assert np.array_equal(np.asarray(sample["image.png"]), image)
            assert np.array_equal(np.asarray(sample["mask.png"]), mask)
            assert np.array_equal(np.asarray(sample["parts.png"]), parts)


def test_webdataset_tar_headers_are_fixed(dataset, wds_out):
    records = []
    for path in sorted(wds_out.glob("*.tar"), key=lambda p: (SPLITS.index(p.name.split("-")[0]), p.name)):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            for start in range(0, len(names), 5):
                key = names[start].split(".")[0]
                assert names[start:start + 5] == [f"{key}.{e}" for e in ("cls", "image.png", "json", "mask.png", "parts.png")]
                records.append(json.loads(tar.extractfile(f"{key}.json").read()))
            for m in members:
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.isfile()) == (0, 0, 0, "", "", 0o644, True)
    for r in records:
        r["meta"] = json.dumps(r["meta"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    records.sort(key=lambda r: r["index"])
    assert rebuilt_manifest(records) == (dataset / MANIFEST_NAME).read_bytes()


def test_webdataset_card_is_read_by_datasets(offline, dataset, wds_out, tmp_path):
    datasets = offline
    ds = datasets.load_dataset(str(wds_out), cache_dir=str(tmp_path / "cache"))
    expected = loader_arrays(dataset, "val")
    assert ds["val"]["cls"] == [label for _, label, *_ in expected]
    assert np.array_equal(np.asarray(ds["val"][0]["mask.png"]), expected[0][3])


# ------------------------------------------------------------------------------ both formats


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_exports_are_deterministic_and_listed(dataset, parquet_out, wds_out, tmp_path, fmt):
    first = parquet_out if fmt == "parquet" else wds_out
    again = tmp_path / "again"
    result = export_dataset(dataset, again, fmt, shard_size=SHARD, progress=False)
    assert file_hashes(again) == file_hashes(first)
    manifest = json.loads((again / EXPORT_MANIFEST).read_text())
    info = read_dataset_json(dataset)
    assert manifest["source"]["manifest_sha256"] == info["manifest_sha256"] and manifest["dataset"] == info
    listed = {e["path"]: e["sha256"] for s in manifest["splits"].values() for e in s["shards"]}
    listed[manifest["card"]["path"]] = manifest["card"]["sha256"]
    hashes = file_hashes(again)
    assert listed == {k: v for k, v in hashes.items() if k != EXPORT_MANIFEST} == dict(result.files)
    assert hashes[EXPORT_MANIFEST] == result.manifest_sha256
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary folder left
    assert dict(result.rows) == {s: 6 for s in SPLITS}


def test_one_split_and_shard_size(dataset, tmp_path):
    result = export_dataset(dataset, tmp_path / "t", "parquet", splits=["test"], shard_size=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "t" / "data").iterdir()) == [
        "test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in sorted((tmp_path / "t" / "data").iterdir())] == [5, 1]
    assert dict(result.rows) == {"test": 6}
    assert [e["split"] for e in front_matter(tmp_path / "t" / "README.md")["configs"][0]["data_files"]] == ["test"]


# ------------------------------------------------------------------------------ bad input


def test_bad_arguments_name_the_argument(dataset, tmp_path):
    with pytest.raises(UsageError, match="--format 'csv'"):
        export_dataset(dataset, tmp_path / "o", "csv")
    with pytest.raises(UsageError, match="--split"):
        export_dataset(dataset, tmp_path / "o", "parquet", splits=["validation"])
    with pytest.raises(UsageError, match="--shard-size"):
        export_dataset(dataset, tmp_path / "o", "parquet", shard_size=0)
    with pytest.raises(DatasetNotFoundError, match="dataset.json"):
        export_dataset(tmp_path, tmp_path / "o", "parquet")
    with pytest.raises(UsageError, match="outside the dataset folder"):
        export_dataset(dataset, dataset / "export", "parquet")
    with pytest.raises(UsageError, match="outside the dataset folder"):
        export_dataset(dataset, dataset.parent, "parquet", overwrite=True)
    assert not (tmp_path / "o").exists() and not (dataset / "export").exists()


def test_out_is_refused_unless_an_earlier_export(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export_dataset(dataset, out, "webdataset", progress=False)
    with pytest.raises(UsageError, match="not an an8flower export"):
        export_dataset(dataset, out, "webdataset", overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    export_dataset(dataset, out, "webdataset", progress=False)  # an empty folder is fine
    (out / "stale.tar").write_bytes(b"old")
    export_dataset(dataset, out, "parquet", splits=["val"], overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", EXPORT_MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def copy_dataset(dataset: Path, dest: Path) -> Path:
    shutil.copytree(dataset, dest)
    return dest


def rewrite_manifest(root: Path, rows: list[ManifestRow]) -> None:
    """Write a manifest and a dataset.json that agree, so only the row contents are wrong."""
    data = manifest_bytes(rows)
    (root / MANIFEST_NAME).write_bytes(data)
    info = read_dataset_json(root)
    info.update(manifest_sha256=sha256_bytes(data), content_sha256=content_sha256(rows))
    (root / DATASET_JSON).write_text(canonical_json(info), encoding="utf-8")


def test_changed_file_is_named_and_nothing_is_left(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "ds")
    row = [r for r in read_manifest(root / MANIFEST_NAME) if r.split == "test"][-1]
    victim = root / row.files["mask"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    out = tmp_path / "exports" / "new" / "out"
    with pytest.raises(DatasetFormatError, match=re.escape(str(victim))):
        export_dataset(root, out, "parquet", shard_size=1, progress=False)  # train and val shards were written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no OUT, no temporary, no created parents


def test_manifest_out_of_step_with_dataset_json(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "ds")
    with open(root / MANIFEST_NAME, "ab") as f:
        f.write(b"\n")
    with pytest.raises(DatasetFormatError, match="manifest_sha256"):
        export_dataset(root, tmp_path / "o", "webdataset")


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "images/../../outside.png", "C:/x.png", "", ".", "a\\..\\..\\x.png"])
def test_manifest_paths_outside_the_folder_are_refused(dataset, tmp_path, path):
    root = copy_dataset(dataset, tmp_path / "ds")
    rows = read_manifest(root / MANIFEST_NAME)
    rows[0] = dataclasses.replace(rows[0], files={**rows[0].files, "image": path})
    rewrite_manifest(root, rows)
    with pytest.raises(DatasetFormatError, match=r"manifest\.csv: file path: path .*(must|inside|outside)"):
        export_dataset(root, tmp_path / "o", "parquet")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("link", ["file", "folder"])
def test_symlink_out_of_the_folder_is_refused(dataset, tmp_path, link):
    root = copy_dataset(dataset, tmp_path / "ds")
    rel = Path(read_manifest(root / MANIFEST_NAME)[0].files["image"])
    inside = root / rel if link == "file" else root / rel.parent
    target = tmp_path / "elsewhere"
    shutil.move(inside, target)  # the same bytes, so only the location is wrong
    os.symlink(target, inside)
    with pytest.raises(DatasetFormatError, match="a symbolic link leads out of the folder"):
        export_dataset(root, tmp_path / "o", "webdataset")


# ------------------------------------------------------------------------------ CLI


def test_cli_export(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(dataset), "--format", "webdataset", "--out", str(out), "--split", "val,test",
                 "--shard-size", "10"]) == 0
    assert "2 shards (val 6, test 6)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "val-000000.tar"]
    for argv, named in ((["--format", "csv"], "--format 'csv'"), (["--format", "parquet", "--shard-size", "x"], "--shard-size"),
                        (["--format", "parquet", "--split", "dev"], "--split dev")):
        assert main(["export", str(dataset), "--out", str(tmp_path / "bad"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("an8flower: error: ") and named in err[0], err
    assert main(["export", str(dataset), "--format", "parquet", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
