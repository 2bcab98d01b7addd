"""Integrity of dataset folders and hostile input (issue 10, items 1-12; issue 11/12 dataset items).

Every test writes its own tiny files: tampered copies of a small generated folder, IDX headers and
gzip streams of zeros, PNG headers claiming huge sizes with a few bytes of data, VOC XML with
non-finite numbers. Nothing here allocates more than a few MB.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from an8flower.cli import main
from an8flower.datacard import dataset_documents
from an8flower.datasets.files import list_subdirs
from an8flower.datasets.generated import An8Flower, An8FlowerOnTheFly, resize_sample
from an8flower.errors import DatasetFormatError, SpecError, UsageError
from an8flower.folderlock import acquire, holder_text
from an8flower.generate import (
    DOCUMENT_BYTES,
    MANIFEST_BYTES_PER_SAMPLE,
    PNG_BYTES_PER_PIXEL,
    estimate_dataset_bytes,
    generate,
)
from an8flower.layout import MAX_PER_CLASS, MAX_SAMPLES
from an8flower.manifest import (
    CROISSANT_NAME,
    DATASET_JSON,
    LOCK_NAME,
    MANIFEST_NAME,
    WORK_DIR,
    ManifestRow,
    canonical_json,
    content_sha256,
    encode_png,
    manifest_bytes,
    read_dataset_json,
    read_manifest,
    sha256_bytes,
)
from an8flower.spec import load_spec
from an8flower.untrusted import PHOTO_MAX_PIXELS, check_relative_path, load_image, resolve_inside
from an8flower.verify import verify_dataset

SIZE, PER_CLASS, SEED = 64, 3, 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "ds"
    generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=SEED, workers=1, progress=False)
    return root


@pytest.fixture()
def copy(dataset, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


def info_of(root: Path) -> dict:
    return json.loads((root / DATASET_JSON).read_text())


def write_info(root: Path, info: dict) -> None:
    (root / DATASET_JSON).write_text(canonical_json(info))


def rewrite_manifest(root: Path, rows: list[ManifestRow]) -> None:
    """A careful tamperer: rewrite the manifest, update both of its hashes in dataset.json and
    rewrite croissant.json (which holds the manifest hash) as generate would."""
    data = manifest_bytes(rows)
    (root / MANIFEST_NAME).write_bytes(data)
    info = info_of(root)
    info["manifest_sha256"], info["content_sha256"] = sha256_bytes(data), content_sha256(rows)
    spec = load_spec("single-6c").with_size(SIZE)
    croissant = dataset_documents(spec, info["seed"], info["per_class"], info["manifest_sha256"])[CROISSANT_NAME]
    (root / CROISSANT_NAME).write_bytes(croissant)
    info["croissant_sha256"] = sha256_bytes(croissant)
    write_info(root, info)


def replace_row(row: ManifestRow, **changes) -> ManifestRow:
    fields = dict(index=row.index, split=row.split, class_name=row.class_name, label=row.label, files=row.files,
                  sha256=row.sha256, pixels_sha256=row.pixels_sha256, meta=row.meta)
    fields.update(changes)
    return ManifestRow(**fields)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with a few bytes of image data."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail the test if any image is decoded (PIL's ImageFile.load)."""
    from PIL import ImageFile

    def refuse(self):
        raise AssertionError(f"decoded an image of {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---------------------------------------------------------------------------------------- 1. verify


def test_verify_passes_on_every_folder_generate_writes(dataset, tmp_path):
    report = verify_dataset(dataset, progress=False)
    assert report.ok, report.lines()
    assert report.checked == 3 * 6 * PER_CLASS and report.rendered == 3 * 6 and not report.notes
    d12 = tmp_path / "d12"
    generate("double-12c", d12, size=SIZE, per_class=3, seed=0, workers=1, shard="2/2", progress=False)
    generate("double-12c", d12, size=SIZE, per_class=3, seed=0, workers=1, shard="1/2", progress=False)
    report = verify_dataset(d12, pixels=True, render="all", progress=False)
    assert report.ok and report.rendered == 36, report.lines()


def _edit_seed(root):
    info = info_of(root)
    info["seed"] = 2
    write_info(root, info)


def _edit_per_class(root):
    info = info_of(root)
    info["per_class"] = 4
    write_info(root, info)


def _edit_classes(root):
    info = info_of(root)
    info["classes"][0], info["classes"][1] = info["classes"][1], info["classes"][0]
    write_info(root, info)


def _remove_a_row(root):
    rows = read_manifest(root / MANIFEST_NAME)
    gone = rows.pop(7)
    for rel in gone.files.values():
        (root / rel).unlink()
    rewrite_manifest(root, rows)
    info = info_of(root)
    info["num_samples"] -= 1
    write_info(root, info)


@pytest.mark.parametrize("tamper, needles", [
    (_edit_seed, ["meta seed 1 (plan: 2)", "differ from the sample rendered again"]),
    (_edit_per_class, ["num_samples 18 (generate writes 24", "split_sizes_per_class", "no row for sample(s)"]),
    (_edit_classes, ["classes [\"centre-yellow\", \"centre-red\""]),
    (_remove_a_row, ["num_samples 17 (generate writes 18", "no row for sample(s) 7"]),
])
def test_verify_checks_dataset_json_against_the_index_plan(copy, capsys, tamper, needles):
    """Each tampering used to verify OK (verify read only the file hashes)."""
    tamper(copy)
    report = verify_dataset(copy, progress=False)
    assert not report.ok
    text = "\n".join(report.lines())
    for needle in needles:
        assert needle in text, text
    assert main(["verify", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "inconsistent: " in captured.out and "FAILED" in captured.err


def test_verify_regenerates_the_data_card_and_croissant(copy):
    """An edit of croissant.json with its recorded hash updated is still caught: the bytes differ
    from what generate writes for this dataset."""
    info = info_of(copy)
    meta = json.loads((copy / info["croissant"]).read_text())
    meta["description"] = "a different dataset"
    data = canonical_json(meta).encode()
    (copy / info["croissant"]).write_bytes(data)
    info["croissant_sha256"] = sha256_bytes(data)
    write_info(copy, info)
    assert verify_dataset(copy, progress=False).changed == [
        f"{info['croissant']} (differs from what generate writes for this dataset)"]


# ---------------------------------------------------------------------------------------- 2. loader


def test_loader_refuses_a_consistent_relabel(copy):
    rows = read_manifest(copy / MANIFEST_NAME)
    rows[4] = replace_row(rows[4], label=0, class_name="centre-red")  # sample 4 is class 4 (index mod 6)
    rewrite_manifest(copy, rows)
    with pytest.raises(DatasetFormatError, match=r"sample 4: class 'centre-red' \(plan: 'centre-blue'\); "
                                                 r"label 0 \(plan: 4\)"):
        An8Flower(copy, "train")
    assert verify_dataset(copy, progress=False).inconsistent == [
        "manifest.csv, sample 4: class 'centre-red' (plan: 'centre-blue'); label 0 (plan: 4)"]


def test_loader_refuses_a_row_moved_from_test_to_train(copy):
    rows = read_manifest(copy / MANIFEST_NAME)
    moved = rows[-1]  # index 17, a test sample
    assert moved.split == "test"
    files = {k: v.replace("/test/", "/train/") for k, v in moved.files.items()}
    for kind in files:
        (copy / moved.files[kind]).rename(copy / files[kind])
    rows[-1] = replace_row(moved, split="train", files=files)
    rewrite_manifest(copy, rows)
    with pytest.raises(DatasetFormatError, match=r"sample 17: split 'train' \(plan: 'test'\)"):
        An8Flower(copy, "train")
    assert "sample 17: split 'train' (plan: 'test')" in verify_dataset(copy, progress=False).inconsistent[0]


def test_loader_checks_decoded_sizes(copy):
    rows = read_manifest(copy / MANIFEST_NAME)
    small = encode_png(np.zeros((32, 32, 3), np.uint8), "image")
    (copy / rows[0].files["image"]).write_bytes(small)
    rows[0] = replace_row(rows[0], sha256={**rows[0].sha256, "image": sha256_bytes(small)})
    rewrite_manifest(copy, rows)
    ds = An8Flower(copy, "train")
    with pytest.raises(DatasetFormatError, match=r"000000\.png: image is 32x32, expected 64x64"):
        ds[0]
    image = rows[0].files["image"]
    assert verify_dataset(copy, render=0, progress=False).changed == [f"{image} (32x32, dataset.json says 64x64)"]
    assert verify_dataset(copy, pixels=True, render=0, progress=False).changed == [image]
    # another 64 x 64 image, byte hash updated: the samples rendered again are compared with the files
    other = (copy / rows[1].files["image"]).read_bytes()
    (copy / image).write_bytes(other)
    rows[0] = replace_row(rows[0], sha256={**rows[0].sha256, "image": sha256_bytes(other)})
    rewrite_manifest(copy, rows)
    assert verify_dataset(copy, progress=False).changed == [f"{image} (pixels differ from the sample rendered again)"]


def test_loader_verify_checks_file_hashes(copy):
    rows = read_manifest(copy / MANIFEST_NAME)
    other = (copy / rows[1].files["image"]).read_bytes()  # a valid 64 x 64 image, another sample's
    (copy / rows[0].files["image"]).write_bytes(other)
    image, _, _ = An8Flower(copy, "train")[0]  # without verify: the file is decoded as it is
    assert image.shape == (3, SIZE, SIZE)
    ds = An8Flower(copy, "train", verify=True)
    with pytest.raises(DatasetFormatError, match=r"000000\.png: SHA-256 differs from the manifest's image_sha256"):
        ds[0]
    assert torch.equal(ds[1][0], An8Flower(copy, "train")[1][0])  # untouched samples read the same


# ---------------------------------------------------------------------------------------- 3. paths


def test_check_relative_path():
    for good in ("a.png", "images/train/x/000001.png", "./a/b.png"):
        assert check_relative_path(good, "list") == good
    for bad, why in (("../x.png", r"'\.\.' component"), ("a/../../x", r"'\.\.' component"), ("/etc/x", "absolute"),
                     ("C:/x.png", "absolute"), ("\\\\srv\\x", "backslash"), ("", "empty"), ("a\0b", "NUL")):
        with pytest.raises(DatasetFormatError, match=rf"list, row 3: path .* {why}"):
            check_relative_path(bad, "list, row 3")


@pytest.mark.parametrize("hostile", ["images/../../outside.png", "{abs}"])
def test_manifest_paths_cannot_leave_the_folder(copy, tmp_path, hostile):
    """A manifest row naming a file outside the folder (whose bytes hash as the row says) used to
    be read by verify (OK), show and the loader."""
    outside = tmp_path / "outside.png"
    rows = read_manifest(copy / MANIFEST_NAME)
    shutil.copy(copy / rows[2].files["image"], outside)  # the very bytes the manifest expects
    path = hostile.format(abs=outside)
    assert (copy / path).resolve() == outside.resolve()
    rows[2] = replace_row(rows[2], files={**rows[2].files, "image": path})
    rewrite_manifest(copy, rows)
    report = verify_dataset(copy, progress=False)
    text = "\n".join(report.lines())
    assert "manifest.csv, sample 2, column image: path" in text and "must stay inside its folder" in text
    assert not report.ok and report.checked == 3 * 18 - 1  # the hostile path was never read
    with pytest.raises(DatasetFormatError, match=r"sample 2: image file"):
        An8Flower(copy, "train")
    from an8flower.show import contact_sheet

    with pytest.raises(DatasetFormatError, match=r"sample 2: image file"):
        contact_sheet(copy)


def test_symlink_leading_out_of_the_folder_is_refused(copy, tmp_path):
    rows = read_manifest(copy / MANIFEST_NAME)
    target = copy / rows[0].files["image"]
    outside = tmp_path / "elsewhere.png"
    shutil.move(target, outside)
    os.symlink(outside, target)  # same bytes, so the hash check alone would pass
    report = verify_dataset(copy, progress=False)
    assert [line for line in report.lines() if "resolves to" in line] == [
        f"inconsistent: manifest.csv, sample 0, column image: path {rows[0].files['image']!r} resolves to "
        f"{outside.resolve()}, outside {copy.resolve()} (a symbolic link leads out of the folder)"]
    with pytest.raises(DatasetFormatError, match="a symbolic link leads out of the folder"):
        An8Flower(copy, "train")[0]
    assert resolve_inside(copy, rows[1].files["image"], "x") == os.path.join(copy, *rows[1].files["image"].split("/"))


def _fashion_release(root: Path, lines: list[str]) -> Path:
    import scipy.io

    (root / "photos").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((5, 6, 3), 40 * k, np.uint8)).save(root / "photos" / f"p{k}.jpg")
    (root / "photos.txt").write_text("".join(f"{line}\n" for line in lines))

    def col(v):
        return np.asarray(v, np.float64).reshape(-1, 1)

    (root / "feat").mkdir()
    scipy.io.savemat(root / "feat" / "col_cco.mat", {"rows": col([0, 1, 2]), "cols": col([0, 1, 0]),
                                                     "data": col([1, 1, 1])})
    scipy.io.savemat(root / "split.mat", {"trainids": col([0, 1, 2]), "validids": col([]), "testids": col([])})
    return root


def test_fashion144k_photo_paths_stay_inside(tmp_path):
    from an8flower.datasets import Fashion144k

    ok = Fashion144k(_fashion_release(tmp_path / "ok", ["p0.jpg", "p1.jpg", "p2.jpg"]), num_classes=2,
                     split_index_base=0, tag_index_base=0)
    assert len(ok) == 3 and ok[2][0].shape == (3, 5, 6)
    for name, line in (("up", "../../etc/passwd"), ("abs", "/etc/passwd")):
        root = _fashion_release(tmp_path / name, ["p0.jpg", line, "p2.jpg"])
        with pytest.raises(DatasetFormatError, match=r"photos\.txt, line 2: path .* must stay inside"):
            Fashion144k(root, num_classes=2, split_index_base=0, tag_index_base=0)
    root = _fashion_release(tmp_path / "link", ["p0.jpg", "p1.jpg", "p2.jpg"])
    (root / "photos" / "p1.jpg").unlink()
    shutil.copy(root / "photos" / "p0.jpg", tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "photos" / "p1.jpg")
    ds = Fashion144k(root, num_classes=2, split_index_base=0, tag_index_base=0)
    ds[0]
    with pytest.raises(DatasetFormatError, match=r"photos\.txt, line 2: path 'p1\.jpg' resolves to .*secret\.jpg"):
        ds[1]


# ---------------------------------------------------------------------------------------- 4. class folders


def _original_release(root: Path) -> Path:
    for c in (1, 2, 3):
        for folder in (f"an8Flower_single_6c/class{c}", f"an8Flower_single_6c_MASK/class{c}"):
            (root / folder).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 60 * c, np.uint8)).save(root / folder / f"c{c}.png")
    return root


def test_hidden_folders_are_not_classes(tmp_path):
    from an8flower.datasets import ILSVRC12, An8FlowerOriginal

    root = _original_release(tmp_path / "orig")
    clean = An8FlowerOriginal(root)
    for hidden in (".ipynb_checkpoints", ".git", ".DS_Store"):
        (root / "an8Flower_single_6c" / hidden / "x").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "an8Flower_single_6c" / hidden / "x.png")
    ds = An8FlowerOriginal(root)
    assert ds.classes == clean.classes == ["class1", "class2", "class3"]
    assert ds.targets == clean.targets == [0, 1, 2]

    inet = tmp_path / "inet"
    for wnid in ("n01000001", "n02000002"):
        (inet / "train" / wnid).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(inet / "train" / wnid / f"{wnid}_0.JPEG")
    (inet / "train" / ".ipynb_checkpoints").mkdir()
    (inet / "train" / "n01000001" / "._n01000001_0.JPEG").write_bytes(b"macOS resource fork")
    ds = ILSVRC12(inet, "train", num_classes=None)
    assert ds.wnids == ["n01000001", "n02000002"] and ds.targets == [0, 1]


def test_symlink_loop_is_refused(tmp_path):
    from an8flower.datasets import An8FlowerOriginal

    root = _original_release(tmp_path / "orig")
    os.symlink("..", root / "an8Flower_single_6c" / "class4")
    with pytest.raises(DatasetFormatError, match=r"class4: symbolic link to .* \(a loop\)"):
        An8FlowerOriginal(root)
    (root / "an8Flower_single_6c" / "class4").unlink()
    os.symlink(root / "an8Flower_single_6c" / "class1", root / "an8Flower_single_6c" / "class4")
    assert list_subdirs(str(root / "an8Flower_single_6c")) == ["class1", "class2", "class3", "class4"]


# ---------------------------------------------------------------------------------------- 5. locks


def test_a_folder_in_use_is_refused_naming_the_process(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with acquire(out / LOCK_NAME, "test"):
        with pytest.raises(UsageError, match=rf"output folder {out}: in use by process {os.getpid()} on "):
            generate("single-6c", out, size=SIZE, per_class=3, workers=1, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert list(out.iterdir()) == []  # the lock file goes with its holder
    generate("single-6c", out, size=SIZE, per_class=3, workers=1, progress=False)
    assert verify_dataset(out, render=0, progress=False).ok  # no lock file left behind


def test_shard_locks(tmp_path):
    out = tmp_path / "out"
    generate("single-6c", out, size=SIZE, per_class=3, workers=1, shard="1/3", progress=False)
    with acquire(out / LOCK_NAME, "folder", shared=True), \
            acquire(out / WORK_DIR / "shard-2-of-3.lock", "shard", holder=holder_text("shard 2/3")):
        with pytest.raises(UsageError, match=rf"shard 2/3: in use by process {os.getpid()} on .* \(shard 2/3\)"):
            generate("single-6c", out, size=SIZE, per_class=3, workers=1, shard="2/3", progress=False)
        with pytest.raises(UsageError, match=rf"output folder {out}: in use by process {os.getpid()} .*shard 2/3"):
            generate("single-6c", out, size=SIZE, per_class=3, workers=1, progress=False)
        # another shard runs beside it
        assert not generate("single-6c", out, size=SIZE, per_class=3, workers=1, shard="3/3", progress=False).complete
    assert generate("single-6c", out, size=SIZE, per_class=3, workers=1, shard="2/3", progress=False).complete
    assert verify_dataset(out, render=0, progress=False).ok


def test_file_systems_without_locks_still_generate(tmp_path, monkeypatch):
    import errno

    import an8flower.folderlock as folderlock

    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(folderlock.fcntl, "flock", unsupported)
    with pytest.warns(RuntimeWarning, match="does not support locks"):
        generate("single-6c", tmp_path / "out", size=SIZE, per_class=3, workers=1, progress=False)
    assert verify_dataset(tmp_path / "out", render=0, progress=False).ok  # no lock file left


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_concurrent_runs(tmp_path):
    """A second unsharded run on a folder another process is generating is refused, naming it; the
    first finishes a folder that verifies."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_script(f"""
        from an8flower.generate import generate
        generate("single-6c", {str(out)!r}, size=64, per_class=150, seed=0, workers=1, progress=False)
    """))
    try:
        _wait_for(lambda: (out / LOCK_NAME).is_file() and (out / LOCK_NAME).read_text().strip(), 30, "the lock")
        with pytest.raises(UsageError, match=rf"in use by process {proc.pid} on "):
            generate("single-6c", out, size=64, per_class=150, seed=0, workers=1, progress=False)
        assert proc.wait(120) == 0
    finally:
        proc.kill()
    assert verify_dataset(out, render=0, progress=False).ok


def test_shards_started_together_finish_one_dataset(tmp_path):
    """Two shards started at the same moment on a new folder share it (shared folder lock); the one
    that completes it waits for the other and writes the manifest once."""
    out = tmp_path / "out"
    procs = [subprocess.Popen(_script(f"""
        from an8flower.generate import generate
        r = generate("single-6c", {str(out)!r}, size=64, per_class=40, seed=0, workers=1, shard="{i}/2", progress=False)
        print(r.complete)
    """), stdout=subprocess.PIPE, text=True) for i in (1, 2)]
    try:
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    assert "True" in outputs
    assert verify_dataset(out, render=0, progress=False).ok


# ---------------------------------------------------------------------------------------- 6. workers


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the children of ``pid``, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out[int(entry)] = cmdline
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_script(f"""
        from an8flower.generate import generate
        if __name__ == "__main__":
            generate("single-6c", {str(out)!r}, size=224, per_class=400, seed=0, workers=2, progress=False)
    """))
    workers: list[int] = []
    try:
        def two_workers():
            kids = [p for p, cmd in _children(proc.pid).items() if "spawn_main" in cmd]
            busy = (out / WORK_DIR / "rows").is_dir() and any((out / WORK_DIR / "rows").iterdir())
            return kids if len(kids) == 2 and busy else None

        workers = _wait_for(two_workers, 60, "two busy workers")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _wait_for(lambda: not any(_alive(p) for p in workers), 5, f"workers {workers} to exit")
    finally:
        proc.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# ---------------------------------------------------------------------------------------- 7, 8. IDX


def _idx_header(dims, type_code=0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_gzip_bomb_stops_at_the_size_the_header_implies(tmp_path):
    from an8flower.datasets import read_idx

    path = tmp_path / "train-images-idx3-ubyte.gz"
    zeros = b"\0" * (1 << 20)
    with gzip.open(path, "wb") as f:  # header for 2 x 28 x 28, then 32 MiB of data: a small bomb
        f.write(_idx_header((2, 28, 28)))
        for _ in range(32):
            f.write(zeros)
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match=rf"{path.name}: expected 1584 bytes for dims 2x28x28 of type u1, "
                                                     r"got more than 1584 \(decompressed\)"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"decompressed {peak} bytes"  # it used to inflate all 32 MiB first


def test_idx_sizes_are_bounded_before_reading(tmp_path):
    from an8flower.datasets import read_idx

    gz = tmp_path / "claims.gz"
    with gzip.open(gz, "wb") as f:
        f.write(_idx_header((60000, 2800, 2800)) + b"\0" * 1000)
    with pytest.raises(DatasetFormatError, match=r"claims\.gz: header declares dims 60000x2800x2800 .* more than a "
                                                 r"gzip file of \d+ bytes can hold"):
        read_idx(gz)
    plain = tmp_path / "claims"
    plain.write_bytes(_idx_header((60000, 2800, 2800)) + b"\0" * 1000)
    with pytest.raises(DatasetFormatError, match=r"claims: expected 470400000016 bytes .* got 1016"):
        read_idx(plain)
    small = tmp_path / "small"
    small.write_bytes(_idx_header((10, 10)) + bytes(100))
    with pytest.raises(DatasetFormatError, match=r"small: .*\(100 bytes\), more than max_bytes=99"):
        read_idx(small, max_bytes=99)
    assert read_idx(small).shape == (10, 10)


@pytest.mark.parametrize("dims, type_code", [((65536,) * 4, 0x08), ((2**32 - 1,) * 3, 0x0E)])
def test_idx_dims_whose_product_overflows(tmp_path, dims, type_code):
    """65536^4 is 2^64: in int64 it wrapped to 0 and a file holding only the header passed the
    length check, then numpy's reshape raised a bare ValueError."""
    from an8flower.datasets import read_idx

    path = tmp_path / "overflow-idx4-ubyte"
    path.write_bytes(_idx_header(dims, type_code))
    with pytest.raises(DatasetFormatError, match=rf"overflow-idx4-ubyte: expected \d+ bytes for dims "
                                                 rf"{'x'.join(map(str, dims))}"):
        read_idx(path)


# ---------------------------------------------------------------------------------------- 9. images


def test_decompression_bomb_is_a_format_error_naming_the_file(tmp_path, no_decoding):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20000, 20000))  # 400 Mpx: above twice Pillow's guard
    with pytest.raises(DatasetFormatError, match=r"bomb\.png: refused as a decompression bomb"):
        load_image(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(png_claiming(7000, 7000))  # 49 Mpx: under Pillow's guard, over the photo limit
    with pytest.raises(DatasetFormatError, match=rf"big\.png: 7000x7000 = 49000000 pixels, more than the limit of "
                                                 rf"{PHOTO_MAX_PIXELS} \(max_pixels\); refused before decoding"):
        load_image(big)
    with pytest.raises(DatasetFormatError, match=r"big\.png: 7000x7000"):
        load_image(big, max_pixels=10_000_000)


def test_show_refuses_an_image_bomb(copy):
    """PIL's DecompressionBombError used to escape `an8flower show` as a traceback."""
    from an8flower.show import contact_sheet

    rows = read_manifest(copy / MANIFEST_NAME)
    (copy / rows[0].files["image"]).write_bytes(png_claiming(20000, 20000))
    with pytest.raises(DatasetFormatError, match=r"000000\.png: refused as a decompression bomb"):
        contact_sheet(copy)


def test_loaders_refuse_image_bombs_before_decoding(copy, tmp_path, no_decoding):
    from an8flower.datasets import An8FlowerOriginal

    root = _original_release(tmp_path / "orig")
    (root / "an8Flower_single_6c" / "class2" / "c2.png").write_bytes(png_claiming(20000, 20000))
    ds = An8FlowerOriginal(root)
    with pytest.raises(DatasetFormatError, match=r"class2/c2\.png: refused as a decompression bomb"):
        ds[1]
    rows = read_manifest(copy / MANIFEST_NAME)
    (copy / rows[0].files["image"]).write_bytes(png_claiming(1000, 1000))  # 1 Mpx: more than a 512 px sample
    with pytest.raises(DatasetFormatError, match=r"000000\.png: 1000x1000 = 1000000 pixels, more than the limit "
                                                 r"of 262144"):
        An8Flower(copy, "train")[0]


def test_photo_limit_is_a_loader_parameter(tmp_path):
    from an8flower.datasets import An8FlowerOriginal

    root = _original_release(tmp_path / "orig")
    assert An8FlowerOriginal(root, max_pixels=16)[0][0].shape == (3, 4, 4)
    with pytest.raises(DatasetFormatError, match=r"4x4 = 16 pixels, more than the limit of 15"):
        An8FlowerOriginal(root, max_pixels=15)[0]


# ---------------------------------------------------------------------------------------- 10. VOC XML


def _voc(width="10", height="8", box=("1", "1", "3", "2")) -> str:
    return (f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>n01000001"
            f"</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            "</bndbox></object></annotation>")


@pytest.mark.parametrize("xml, field", [
    (_voc(width="inf"), "width"), (_voc(width="nan"), "width"), (_voc(height="-inf"), "height"),
    (_voc(box=("nan", "1", "3", "2")), "xmin"), (_voc(box=("1", "1", "1e999", "2")), "xmax"),
])
def test_non_finite_voc_numbers_are_format_errors(tmp_path, xml, field):
    from an8flower.datasets import parse_voc_xml

    path = tmp_path / "ILSVRC2012_val_00000001.xml"
    path.write_text(xml)
    with pytest.raises(DatasetFormatError, match=rf"ILSVRC2012_val_00000001\.xml: <{field}> is not a finite number"):
        parse_voc_xml(path)


def test_non_finite_loc_coordinate(tmp_path):
    from an8flower.datasets import read_loc_val_solution

    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01000001 1 nan 3 4 \n")
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution\.csv, line 2: box coordinate is not a finite number"):
        read_loc_val_solution(path)


# ---------------------------------------------------------------------------------------- 11. spec colours


def _spec_with(colours: dict, **nuisance) -> dict:
    spec = load_spec("single-6c").to_dict()
    spec["colours"].update(colours)
    spec["nuisance"].update(nuisance)
    return spec


def test_class_colours_must_stay_apart():
    from an8flower.spec import VariantSpec

    same = _spec_with({"cyan": [40, 70, 225]})  # the RGB of "blue"
    with pytest.raises(SpecError, match=r"class colours 'blue' \[40, 70, 225\] and 'cyan' \[40, 70, 225\] of part "
                                        r"'centre' can be rendered alike"):
        VariantSpec.from_dict(same)
    near = _spec_with({"cyan": [60, 90, 245]})  # 20 levels apart in each channel
    with pytest.raises(SpecError, match=r"'blue' .* and 'cyan' .* at most -\d+\.\d levels apart"):
        VariantSpec.from_dict(near)
    # 20 levels apart are enough without jitter and lighting, not with the defaults
    VariantSpec.from_dict(_spec_with({"cyan": [60, 90, 245]}, class_jitter=[0, 0], illumination=[0, 0], tint=[0, 0]))
    with pytest.raises(SpecError, match="can be rendered alike"):
        VariantSpec.from_dict(_spec_with({"cyan": [40, 70, 185]}, class_jitter=[0, 12]))
    VariantSpec.from_dict(_spec_with({"cyan": [40, 70, 185]}, class_jitter=[0, 12], illumination=[0, 0], tint=[0, 0]))


def test_builtin_class_colours_pass_with_margin():
    from an8flower.spec import class_colour_gap, class_colour_range

    spec = load_spec("single-6c")
    # hand values: blue (40, 70, 225), J = 12, a = 0.18, t = 0.04 -> green channel [58 * 0.7872, 82 * 1.2272]
    lo, hi = class_colour_range((40, 70, 225), spec.nuisance)[1]
    assert lo == pytest.approx(58 * 0.82 * 0.96) and hi == pytest.approx(82 * 1.18 * 1.04)
    # cyan's green (195) starts at 183 * 0.7872 = 144.06, 43.43 above blue's top, 82 * 1.2272 = 100.63
    assert class_colour_gap(spec.rgb("blue"), spec.rgb("cyan"), spec.nuisance) == pytest.approx(183 * 0.7872 - 82 * 1.2272)
    for variant in ("single-6c", "double-12c"):
        spec = load_spec(variant)
        for j in range(len(spec.discriminative)):
            used = sorted({cols[j] for cols in spec.class_colours})
            gaps = [class_colour_gap(spec.rgb(a), spec.rgb(b), spec.nuisance) for a in used for b in used if a < b]
            assert min(gaps) > 40


# ---------------------------------------------------------------------------------------- 12. counts


@pytest.mark.parametrize("per_class, needle", [
    (10**9, f"at most {MAX_PER_CLASS:,} images per class"),
    (MAX_PER_CLASS + 1, f"at most {MAX_PER_CLASS:,} images per class"),
])
def test_absurd_counts_are_refused_before_anything_is_written(tmp_path, capsys, per_class, needle):
    line_argv = ["generate", "single-6c", "--out", str(tmp_path / "out"), "--per-class", str(per_class)]
    assert main(line_argv) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_total_images_are_bounded(tmp_path):
    with pytest.raises(UsageError, match=rf"12 classes x 90,000 = 1,080,000 images, more than the {MAX_SAMPLES:,}"):
        generate("double-12c", tmp_path / "out", per_class=90_000, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="1,080,000 images"):  # the on-the-fly dataset keeps the same bound
        An8FlowerOnTheFly("double-12c", "test", per_class=90_000)


def test_output_size_is_estimated_against_free_space(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import an8flower.generate as gen

    spec = load_spec("single-6c").with_size(SIZE)
    per_sample = SIZE * SIZE * PNG_BYTES_PER_PIXEL + MANIFEST_BYTES_PER_SAMPLE
    assert estimate_dataset_bytes(spec, 3) == int(18 * per_sample) + DOCUMENT_BYTES == 276_947
    assert estimate_dataset_bytes(load_spec("double-12c"), 1000) == int(12000 * (224 * 224 * 1.9 + 2048)) + 100_000
    monkeypatch.setattr(gen.shutil, "disk_usage", lambda path: SimpleNamespace(free=5000))
    with pytest.raises(UsageError, match=r"need about 276\.9 KB more, but only 5\.0 KB are free"):
        generate(spec, tmp_path / "out", per_class=3, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(gen, "MAX_OUTPUT_BYTES", 100_000)
    with pytest.raises(UsageError, match=r"would take about 276\.9 KB, more than the 100\.0 KB limit"):
        generate(spec, tmp_path / "out", per_class=3, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_absurd_output_size_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"per-class 20000: 240,000 images of 512 px would take about 120\.0 GB, "
                                         r"more than the 100\.0 GB limit"):
        generate("double-12c", tmp_path / "out", size=512, per_class=20_000, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_estimate_bounds_what_generate_writes(dataset):
    total = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file())
    assert total < estimate_dataset_bytes(load_spec("single-6c").with_size(SIZE), PER_CLASS)


# ---------------------------------------------------------------------------------------- (a) resizing


def test_resizing_leaks_no_class_colour_outside_the_mask():
    """Outside the resized mask, the resized image is the same whatever the class: the sample
    re-rendered as every other class gives identical pixels there. Nearest-neighbour masks fail it."""
    import cv2

    from an8flower.render import render_as

    spec = load_spec("double-12c")
    leaks = 0
    for index in range(4):
        base = render_as(spec, 0, index, 64, index % 12)
        for other in (5, 10):
            alt = render_as(spec, 0, index, 64, other)
            assert np.array_equal(base.mask, alt.mask)
            for side in (32, 40, 100):
                image, mask, parts = resize_sample(base.image, base.mask, base.parts, side, spec.discriminative_ids)
                image2, _, _ = resize_sample(alt.image, alt.mask, alt.parts, side, spec.discriminative_ids)
                assert image.shape == (side, side, 3) and mask.shape == parts.shape == (side, side)
                assert np.array_equal(image[~mask], image2[~mask]), (index, other, side)
                assert np.array_equal(mask, np.isin(parts, spec.discriminative_ids))
                nearest = cv2.resize(base.mask.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
                leaks += int(not np.array_equal(image[~nearest], image2[~nearest]))
    assert leaks > 0  # the old approach shows class colour outside its mask


def test_datasets_resize_option(dataset):
    disk = An8Flower(dataset, "val", return_parts=True, resize=40)
    fly = An8FlowerOnTheFly("single-6c", "val", size=SIZE, per_class=PER_CLASS, seed=SEED, return_parts=True,
                            resize=40)
    native = An8Flower(dataset, "val", return_parts=True)
    spec = load_spec("single-6c")
    for i in range(len(disk)):
        a, b, n = disk[i], fly[i], native[i]
        assert a[0].shape == (3, 40, 40) and a[2].shape == a[3].shape == (40, 40)
        assert all(torch.equal(x, y) for x, y in zip((a[0], a[2], a[3]), (b[0], b[2], b[3]), strict=True))
        image = (n[0].permute(1, 2, 0) * 255).round().byte().numpy()
        want = resize_sample(image, n[2].numpy(), n[3].numpy(), 40, spec.discriminative_ids)
        assert torch.equal(a[0], torch.from_numpy(want[0]).permute(2, 0, 1).float() / 255)
        assert np.array_equal(a[2].numpy(), want[1]) and np.array_equal(disk.part_map(i).numpy(), want[2])
    with pytest.raises(UsageError, match="resize 0"):
        An8Flower(dataset, "val", resize=0)


# ---------------------------------------------------------------------------------------- (b) folders


def test_image_folder_labels_agree_with_an8flower(tmp_path):
    from torchvision.datasets import ImageFolder

    root = tmp_path / "d12"
    generate("double-12c", root, size=SIZE, per_class=3, seed=0, workers=1, progress=False)
    ours = An8Flower(root, "train")
    theirs = ImageFolder(str(root / "images" / "train"))
    assert list(theirs.class_to_idx) == info_of(root)["class_folders"]
    assert list(theirs.class_to_idx.values()) == list(range(12))

    def normal(samples):
        return {os.path.normpath(p): label for p, label in samples}

    assert normal(theirs.samples) == normal(ours.samples) and len(ours) == 12


def test_format_1_folders_are_refused_with_a_clear_message(copy):
    info = info_of(copy)
    info["format"] = "an8flower-dataset/1"
    write_info(copy, info)
    with pytest.raises(DatasetFormatError, match=r"written by an earlier an8flower \(format an8flower-dataset/1.*regenerate"):
        read_dataset_json(copy)
    with pytest.raises(DatasetFormatError, match="regenerate"):
        An8Flower(copy)


# ---------------------------------------------------------------------------------------- issue 18


# --- 8. a full disk


def _enospc(path) -> OSError:
    import errno

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_generating_is_one_line(tmp_path, monkeypatch, capsys):
    import an8flower.generate as gen

    real, calls = gen.atomic_write_bytes, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) > 7:
            raise _enospc(path)
        real(path, data)

    monkeypatch.setattr(gen, "atomic_write_bytes", fill_up)
    out = tmp_path / "out"
    rc = main(["generate", "single-6c", "--out", str(out), "--size", str(SIZE), "--per-class", "3", "--workers", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"an8flower: error: {out}: the disk is full (writing {out}")
    assert re.search(r"about [\d.,]+ (KB|MB) more is needed \([\d.,]+ KB still to write, [\d.,]+ \w+ free there\)", err)


def test_free_space_is_counted_in_whole_blocks(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import an8flower.atomic as atomic
    from an8flower.errors import DiskFullError

    assert atomic.on_disk_bytes(10, 3, 4096) == 3 * 4096  # three 3-4 byte files, a block each
    assert atomic.on_disk_bytes(8192, 1, 4096) == 2 * 4096  # exactly two blocks
    assert atomic.on_disk_bytes(8193, 2, 4096) == 3 * 4096  # 8192 + 1 or 4097 + 4096: three blocks
    assert atomic.on_disk_bytes(0, 0, 512) == 0
    spec = load_spec("single-6c").with_size(SIZE)
    estimate = estimate_dataset_bytes(spec, 3)  # 276,947 bytes in ~130 files and folders
    monkeypatch.setattr(atomic, "block_size", lambda path: 4096)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=estimate + 20_000))
    with pytest.raises(DiskFullError, match=r"need about 276\.9 KB more, but only 296\.9 KB are free there "
                                            r"\(\d+ files in whole 4,096-byte blocks take about [\d.]+ KB\)"):
        generate(spec, tmp_path / "out", per_class=3, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=estimate + 1_000_000))
    assert generate(spec, tmp_path / "out", per_class=3, workers=1, progress=False).complete


def test_disk_full_while_exporting_leaves_nothing(dataset, tmp_path, monkeypatch):
    import an8flower.export as export
    from an8flower.errors import DiskFullError

    def fill_up(path, shard, source, bar):
        path.write_bytes(b"partial")
        raise _enospc(path)

    monkeypatch.setitem(export._WRITERS, "webdataset", fill_up)
    out = tmp_path / "exports" / "wds"
    with pytest.raises(DiskFullError, match=rf"^{re.escape(str(out))}: the disk is full \(writing .*\): about "
                                            r"[\d.]+ KB more is needed \([\d.]+ KB still to write"):
        export.export_dataset(dataset, out, format="webdataset", progress=False)
    assert list(tmp_path.iterdir()) == []


# --- 1. lock files are never followed


def test_a_lock_path_that_is_no_plain_lock_file_is_refused(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("my notes\n")
    folder = tmp_path / "locks"
    folder.mkdir()
    link = folder / "sym.lock"
    link.symlink_to(precious)
    hard = folder / "hard.lock"
    os.link(precious, hard)
    fifo = folder / "fifo.lock"
    os.mkfifo(fifo)
    mine = folder / "notes.lock"
    mine.write_text("not a lock\n")
    for path, why in ((link, "a symbolic link"), (hard, "a file with 2 hard links"), (fifo, "not a regular file"),
                      (folder, "not a regular file"), (mine, "a file holding 'not a lock'")):
        with pytest.raises(UsageError, match=rf"^thing: {re.escape(str(path))} is {why}, not a lock file an8flower "
                                             r"writes; remove it$"):
            acquire(path, "thing")
    assert precious.read_text() == "my notes\n" and mine.read_text() == "not a lock\n"
    assert link.is_symlink() and hard.exists() and fifo.exists()
    with acquire(folder / "ok.lock", "thing") as lock:  # a plain lock file still works
        assert (folder / "ok.lock").read_text().startswith(f"process {os.getpid()} on ")
        assert lock.fd is not None
    assert not (folder / "ok.lock").exists()


def test_generate_never_writes_through_a_planted_lock_link(tmp_path, dataset):
    precious = tmp_path / "precious.txt"
    precious.write_text("my notes\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(precious)
    with pytest.raises(UsageError, match=rf"{LOCK_NAME} is a symbolic link, not a lock file an8flower writes"):
        generate("single-6c", out, size=SIZE, per_class=3, workers=1, progress=False)
    assert precious.read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    # a shard lock planted in an unfinished generation's work folder
    part = tmp_path / "part"
    assert not generate("single-6c", part, size=SIZE, per_class=3, seed=SEED, workers=1, shard="1/2",
                        progress=False).complete
    (part / WORK_DIR / "shard-2-of-2.lock").symlink_to(precious)
    with pytest.raises(UsageError, match=r"shard-2-of-2\.lock is a symbolic link"):
        generate("single-6c", part, size=SIZE, per_class=3, seed=SEED, workers=1, shard="2/2", progress=False)
    assert precious.read_text() == "my notes\n"
    # a work folder that is a link leads the writes out of the folder: refused too
    away = tmp_path / "away"
    away.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / WORK_DIR).symlink_to(away)
    with pytest.raises(UsageError, match=rf"{WORK_DIR} is a symbolic link, not the work folder"):
        generate("single-6c", other, size=SIZE, per_class=3, workers=1, progress=False)
    assert list(away.iterdir()) == []


# --- 3. export applies the loader's checks


def _move_last_test_row_to_train(root: Path) -> None:
    rows = read_manifest(root / MANIFEST_NAME)
    moved = rows[-1]
    files = {k: v.replace("/test/", "/train/") for k, v in moved.files.items()}
    for kind, rel in files.items():
        (root / moved.files[kind]).rename(root / rel)
    rows[-1] = replace_row(moved, split="train", files=files)
    rewrite_manifest(root, rows)


def _relabel(root: Path) -> None:
    rows = read_manifest(root / MANIFEST_NAME)
    rows[4] = replace_row(rows[4], label=0, class_name="centre-red")
    rewrite_manifest(root, rows)


def _big_image(root: Path) -> None:
    rows = read_manifest(root / MANIFEST_NAME)
    big = encode_png(np.zeros((500, 500, 3), np.uint8), "image")
    (root / rows[0].files["image"]).write_bytes(big)
    rows[0] = replace_row(rows[0], sha256={**rows[0].sha256, "image": sha256_bytes(big)})
    rewrite_manifest(root, rows)


@pytest.mark.parametrize("reseal, needle", [
    (_move_last_test_row_to_train, r"sample 17: split 'train' \(plan: 'test'\)"),
    (_relabel, r"sample 4: class 'centre-red' \(plan: 'centre-blue'\); label 0 \(plan: 4\)"),
    (_big_image, r"000000\.png: image is 500x500, expected 64x64"),
])
def test_export_refuses_what_the_loader_refuses(copy, tmp_path, reseal, needle):
    from an8flower.export import export_dataset

    reseal(copy)
    with pytest.raises(DatasetFormatError, match=needle):
        An8Flower(copy, "train")[0]
    for fmt in ("webdataset", "parquet"):
        with pytest.raises(DatasetFormatError, match=needle):
            export_dataset(copy, tmp_path / "out", format=fmt, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


# --- 5. verify lists every entry generate would not write; no links


def test_verify_lists_linked_class_folders_empty_folders_and_links(copy):
    from torchvision.datasets import ImageFolder

    train = copy / "images" / "train"
    (train / "00-aaa").symlink_to(train / "01-centre-yellow", target_is_directory=True)
    assert len(ImageFolder(str(train)).classes) == 7  # what the link does to ImageFolder's labels
    (copy / "masks" / "val" / "empty").mkdir()
    (copy / ".ipynb_checkpoints").mkdir()
    rows = read_manifest(copy / MANIFEST_NAME)
    linked = copy / rows[1].files["parts"]  # a sample file replaced by a link to a file with its very bytes
    shutil.move(linked, copy / "parts.png")
    linked.symlink_to(copy / "parts.png")
    report = verify_dataset(copy, render=0, progress=False)
    assert not report.ok
    assert report.extra == [".ipynb_checkpoints/", "parts.png", "images/train/00-aaa (symbolic link to "
                            f"{train / '01-centre-yellow'})", "masks/val/empty/",
                            f"{rows[1].files['parts']} (symbolic link to {copy / 'parts.png'})"]
    assert report.inconsistent == [f"manifest.csv, sample 1, column parts: path {rows[1].files['parts']!r} passes "
                                   f"through a symbolic link (it resolves to {(copy / 'parts.png').resolve()}); the "
                                   "folder must hold no links"]
    with pytest.raises(DatasetFormatError, match="passes through a symbolic link"):
        An8Flower(copy, "train", return_parts=True)[1]


def test_verify_never_opens_a_data_card_path_from_dataset_json(copy, tmp_path, monkeypatch):
    import an8flower.verify as verify

    secret = tmp_path / "secret.md"
    secret.write_text("not yours\n")
    info = info_of(copy)
    info["data_card"] = "../secret.md"
    write_info(copy, info)
    opened = []
    real = verify.read_bounded
    monkeypatch.setattr(verify, "read_bounded", lambda path, *a, **k: opened.append(Path(path)) or real(path, *a, **k))
    report = verify.verify_dataset(copy, render=0, progress=False)
    assert all(copy in p.parents for p in opened) and len(opened) == 3 + 3 * 18  # manifest, 2 documents, samples
    assert report.inconsistent == ['dataset.json: data_card "../secret.md" (generate writes "DATACARD.md" for this '
                                   "spec, seed and per_class)"]
    assert report.changed == report.missing == [] and "secret" not in " ".join(report.extra)


# --- 6. unbounded reads


def test_a_huge_sparse_sample_file_is_refused_unread(copy, tmp_path, monkeypatch):
    from an8flower.export import export_dataset
    from an8flower.png import max_png_bytes

    rows = read_manifest(copy / MANIFEST_NAME)
    victim = copy / rows[0].files["mask"]
    with open(victim, "r+b") as f:
        f.truncate(20 * 10**9)  # sparse: takes no disk space
    limit = max_png_bytes("mask", SIZE)
    why = f"is 20,000,000,000 bytes, more than the {limit:,} its format allows there; refused unread"
    report = verify_dataset(copy, render=0, progress=False)
    assert report.changed == [f"{rows[0].files['mask']} (mask file of sample 0 {why})".replace("mask file of sample 0 ",
                                                                                              "sample file ")]
    with pytest.raises(DatasetFormatError, match=re.escape(why)):
        An8Flower(copy, "train", verify=True)[0]
    with pytest.raises(DatasetFormatError, match=re.escape(why)):
        An8Flower(copy, "train")[0]
    with pytest.raises(DatasetFormatError, match=re.escape(why)):
        export_dataset(copy, tmp_path / "out", format="webdataset", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_manifest_that_is_a_device_or_fifo_is_refused(copy, target):
    from an8flower.show import contact_sheet

    (copy / MANIFEST_NAME).unlink()
    if target == "fifo":
        os.mkfifo(copy / MANIFEST_NAME)
        needle = "manifest is not a regular file"
    else:
        (copy / MANIFEST_NAME).symlink_to(target)
        needle = "manifest is a symbolic link"
    for call in (lambda: An8Flower(copy, "train"), lambda: contact_sheet(copy), lambda: verify_dataset(copy)):
        with pytest.raises(DatasetFormatError, match=rf"{MANIFEST_NAME}: {needle}"):
            call()


def test_show_bounds_its_options_before_allocating(dataset, tmp_path, capsys, monkeypatch):
    import an8flower.show as show

    out = tmp_path / "sheet.png"
    assert main(["show", str(dataset), "--out", str(out), "--thumb", "100000"]) == 2
    assert capsys.readouterr().err.strip() == "an8flower: error: thumb 100000: must be an integer in 16..512"
    assert main(["show", str(dataset), "--out", str(out), "--per-class", str(10**12)]) == 2
    assert "per-class 1000000000000: must be an integer in 1..100,000" in capsys.readouterr().err
    monkeypatch.setattr(show, "SHEET_MAX_PIXELS", 100_000)
    with pytest.raises(UsageError, match=r"the sheet would be [\d,]+ x [\d,]+ = [\d,]+ pixels, more than 100,000"):
        show.contact_sheet(dataset, thumb=512)
    assert not out.exists()


# --- 7. one-line errors instead of tracebacks


def _manifest_with_meta(root: Path, meta_text: str) -> None:
    text = (root / MANIFEST_NAME).read_text()
    lines = text.split("\n")
    first = lines[1]
    fields = first.split(",", 13)
    lines[1] = ",".join(fields[:13]) + "," + '"' + meta_text.replace('"', '""') + '"'
    data = "\n".join(lines).encode()
    (root / MANIFEST_NAME).write_bytes(data)
    info = info_of(root)
    info["manifest_sha256"] = sha256_bytes(data)
    write_info(root, info)


@pytest.mark.parametrize("meta, needle", [
    ('{"x": "' + "a" * 140_000 + '"}', r"manifest\.csv, line 2: not valid CSV \(field larger than field limit"),
    ("[" * 10_000 + "]" * 10_000, r"manifest\.csv, line 2: malformed row \(column meta: JSON nested too deeply\)"),
    ("[1, 2]", r"manifest\.csv, line 2: malformed row \(column meta: expected a JSON object, got list\)"),
], ids=["long-field", "deep-meta", "list-meta"])
def test_hostile_manifest_fields_are_one_line_errors(copy, capsys, meta, needle):
    _manifest_with_meta(copy, meta)
    with pytest.raises(DatasetFormatError, match=needle):
        An8Flower(copy, "train")
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(needle, err) and "\n" not in err and len(err) < 400


def test_deep_json_in_dataset_json_is_one_line(copy, capsys):
    (copy / DATASET_JSON).write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["verify", str(copy)]) == 2
    assert capsys.readouterr().err.strip() == f"an8flower: error: {copy / DATASET_JSON}: JSON nested too deeply"


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(size=10**400), r"spec field 'size': must lie in \[64, 512\], got 1000000000000000.*\.\.\..*$"),
    (lambda d: d["nuisance"].update(petal_count=[1, -10**400]), r"spec field 'nuisance.petal_count': must lie in"),
    (lambda d: d["nuisance"].update(scale=[[[[[[[[1]]]]]]], 1]), r"spec field 'nuisance.scale': expected numbers, "
                                                                 r"got \[\[\[\[\.\.\.\]\]\], 1\]"),
], ids=["400-digits", "negative-400-digits", "nested"])
def test_hostile_spec_numbers_and_nesting_are_one_line(tmp_path, capsys, edit, needle):
    spec = load_spec("single-6c").to_dict()
    edit(spec)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["generate", str(path), "--out", str(tmp_path / "out"), "--per-class", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"an8flower: error: {path}: ") and re.search(needle, err) and len(err) < 400
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["generate", str(deep), "--out", str(tmp_path / "out"), "--per-class", "3"]) == 2
    assert capsys.readouterr().err.strip() == f"an8flower: error: {deep}: not a spec: JSON nested too deeply"
    assert not (tmp_path / "out").exists()


def test_a_huge_voc_box_on_a_small_size_is_a_format_error(tmp_path):
    from an8flower.datasets import ILSVRC12, parse_voc_xml

    path = tmp_path / "ILSVRC2012_val_00000001.xml"
    path.write_text(_voc(width="4", height="4", box=("0", "0", "1e308", "2")))
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_val_00000001\.xml: <xmax> 1e308 is larger than any "
                                                 r"image side"):
        parse_voc_xml(path)
    root = tmp_path / "ilsvrc"
    (root / "val" / "n01000001").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "n01000001" / "ILSVRC2012_val_00000001.JPEG")
    (root / "ILSVRC2012_bbox_val_v3" / "val").mkdir(parents=True)
    shutil.copy(path, root / "ILSVRC2012_bbox_val_v3" / "val" / path.name)
    ds = ILSVRC12(root, split="val", num_classes=None)
    with pytest.raises(DatasetFormatError, match=r"<xmax> 1e308 is larger than any image side"):
        ds[0]


# --- 10. smaller ones: stale export temporaries, one seed rule


def test_export_removes_the_temporaries_of_killed_exports(dataset, tmp_path):
    from an8flower.export import export_dataset

    out = tmp_path / "exports" / "wds"
    out.parent.mkdir()
    stale = out.parent / ".wds.export-4242-0badf00d.tmp"  # a killed export's: nobody holds its lock
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "half.tar").write_bytes(b"x" * 100)
    running = out.parent / ".wds.export-4343-cafebabe.tmp"  # a running export's: its lock is held
    running.mkdir()
    other = out.parent / ".other.export-4242-0badf00d.tmp"  # another OUT's: not ours to judge
    other.mkdir()
    with acquire(out.parent / ".wds.export-4343-cafebabe.lock", "a running export"):
        export_dataset(dataset, out, format="webdataset", progress=False)
        assert sorted(p.name for p in out.parent.iterdir()) == [".other.export-4242-0badf00d.tmp",
                                                                 ".wds.export-4343-cafebabe.lock",
                                                                 ".wds.export-4343-cafebabe.tmp", "wds"]
    assert not stale.exists() and running.is_dir() and other.is_dir()


def test_one_seed_rule_for_generate_and_intervene(tmp_path, capsys):
    from an8flower.intervene import intervene
    from an8flower.spec import check_seed

    spec = load_spec("single-6c")
    message = "seed 18446744073709551616: must be an integer in 0..2**63-1"
    for call in (lambda: generate(spec, tmp_path / "g", seed=2**64, per_class=3, progress=False),
                 lambda: intervene(spec, 2**64, 0, 64),
                 lambda: An8FlowerOnTheFly(spec, "train", size=64, per_class=3, seed=2**64)):
        with pytest.raises(UsageError, match=re.escape(message)):
            call()
    for argv in (["generate", "single-6c", "--out", str(tmp_path / "g"), "--seed", str(2**64)],
                 ["intervene", "single-6c", "--index", "0", "--seed", str(2**64), "--out", str(tmp_path / "i.png")]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"an8flower: error: {message}"
    assert check_seed(2**63 - 1) == 2**63 - 1 and check_seed(np.int64(5)) == 5
    assert not any(tmp_path.iterdir())


def test_generate_reads_its_work_folder_within_bounds(tmp_path):
    part = tmp_path / "part"
    assert not generate("single-6c", part, size=SIZE, per_class=3, seed=SEED, workers=1, shard="1/2",
                        progress=False).complete
    journal = part / WORK_DIR / "rows" / "chunk-000000.json"
    journal.unlink()
    journal.symlink_to("/dev/zero")  # a chunk row file from elsewhere: not read, the chunk is rendered again
    result = generate("single-6c", part, size=SIZE, per_class=3, seed=SEED, workers=1, shard="1/2", progress=False)
    assert result.rendered == 1 and result.skipped == 8 and not journal.is_symlink()
    plan = part / WORK_DIR / "plan.json"
    plan.unlink()
    plan.symlink_to("/dev/zero")
    with pytest.raises(UsageError, match=r"unreadable \.an8flower-work/plan\.json \(.*plan\.json is a symbolic link"):
        generate("single-6c", part, size=SIZE, per_class=3, seed=SEED, workers=1, shard="2/2", progress=False)
