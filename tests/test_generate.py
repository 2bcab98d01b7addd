"""The generator: index plan and splits, byte-identical output across workers and shards, resume,
and the files on disk (class folders, counts, masks against part maps, class colours)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from an8flower.errors import UsageError
from an8flower.generate import chunk_size, generate
from an8flower.layout import (
    DEFAULT_PER_CLASS,
    SPLITS,
    IndexPlan,
    parse_shard,
    plan_indices,
    split_sizes,
)
from an8flower.manifest import (
    DATASET_JSON,
    MANIFEST_NAME,
    WORK_DIR,
    decode_png,
    pixel_sha256,
    read_manifest,
    sha256_file,
)
from an8flower.render import class_of
from an8flower.spec import load_spec
from an8flower.verify import verify_dataset

SIZE = 64
PER_CLASS = 4  # 3 train / 1 val / 1 test would be 5; 4 gives 2/1/1


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """single-6c, 64 px, 4 per class, seed 3, rendered in this process (workers=1)."""
    root = tmp_path_factory.mktemp("ref") / "single"
    result = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    assert result.complete and result.rendered == 6 * PER_CLASS
    assert verify_dataset(root, progress=False).ok  # and so does every folder tested equal to it below
    return root


# ------------------------------------------------------------------------------ plan


@pytest.mark.parametrize(
    "n, expected",
    [(1000, (700, 100, 200)), (100, (70, 10, 20)), (10, (7, 1, 2)), (5, (3, 1, 1)), (4, (2, 1, 1)), (3, (1, 1, 1))],
)
def test_split_sizes_hand_values(n, expected):
    sizes = split_sizes(n)
    assert (sizes["train"], sizes["val"], sizes["test"]) == expected
    assert sum(sizes.values()) == n


@pytest.mark.parametrize("n", [2, 0, -5, 3.0, True])
def test_split_sizes_rejects_too_few(n):
    with pytest.raises(UsageError, match="per-class"):
        split_sizes(n)


def test_default_is_700_100_200_per_class():
    assert split_sizes(DEFAULT_PER_CLASS) == {"train": 700, "val": 100, "test": 200}


@pytest.mark.parametrize("k, n", [(6, 1000), (12, 7), (6, 3)])
def test_index_plan_is_exact_and_contiguous(k, n):
    plan = IndexPlan(k, n)
    covered = []
    for split in SPLITS:
        r = plan.split_range(split)
        covered.extend(r)
        labels = np.array([plan.class_of(i) for i in r])
        # every class exactly split_sizes(n)[split] times
        assert np.bincount(labels, minlength=k).tolist() == [split_sizes(n)[split]] * k
        assert all(plan.split_of(i) == split for i in r)
    assert covered == list(range(k * n))


def test_plan_matches_renderer_labels():
    spec = load_spec("double-12c")
    plan = IndexPlan(spec.num_classes, 10)
    assert all(plan.class_of(i) == class_of(spec, i) for i in range(plan.total))
    assert plan_indices(spec, "val", 10) == range(12 * 7, 12 * 8)
    assert plan_indices(spec, "test", 10) == range(12 * 8, 120)


def test_chunk_size_hand_values():
    assert chunk_size(24) == 1
    assert chunk_size(640) == 10
    assert chunk_size(12000) == 32


@pytest.mark.parametrize("text, expected", [("1/4", (1, 4)), ("4/4", (4, 4)), ("1/1", (1, 1)), (None, None)])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "1", "1/2/3", "-1/2", ""])
def test_parse_shard_rejects(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


# ------------------------------------------------------------------------------ files on disk


def test_class_folders_and_counts(reference):
    spec = load_spec("single-6c")
    info = json.loads((reference / DATASET_JSON).read_text())
    sizes = split_sizes(PER_CLASS)
    folders = [f"{label:02d}-{name}" for label, name in enumerate(spec.classes)]  # sorted = label order
    assert info["class_folders"] == folders == sorted(folders)
    for kind in ("images", "masks", "parts"):
        for split in SPLITS:
            assert sorted(p.name for p in (reference / kind / split).iterdir()) == folders
            for name in folders:
                assert len(list((reference / kind / split / name).glob("*.png"))) == sizes[split]
    assert info["counts"] == {s: {c: sizes[s] for c in spec.classes} for s in SPLITS}
    assert info["num_samples"] == 6 * PER_CLASS
    assert info["spec"] == spec.with_size(SIZE).to_dict()
    assert info["spec_sha256"] == spec.with_size(SIZE).sha256()
    assert info["seed"] == 3 and info["size"] == SIZE
    assert info["manifest_sha256"] == sha256_file(reference / MANIFEST_NAME)
    assert not (reference / WORK_DIR).exists()


def test_manifest_rows_match_files_and_plan(reference):
    spec = load_spec("single-6c")
    rows = read_manifest(reference / MANIFEST_NAME)
    plan = IndexPlan(6, PER_CLASS)
    assert [r.index for r in rows] == list(range(plan.total))
    for r in rows:
        assert r.label == r.index % 6 and r.class_name == spec.classes[r.label]
        assert r.split == plan.split_of(r.index)
        assert r.files["image"] == f"images/{r.split}/{r.label:02d}-{r.class_name}/{r.index:06d}.png"
        for kind in ("image", "mask", "parts"):
            path = reference / r.files[kind]
            assert sha256_file(path) == r.sha256[kind]
            assert pixel_sha256(decode_png(path, kind)) == r.pixels_sha256[kind]


def test_masks_align_with_part_maps(reference):
    spec = load_spec("single-6c")
    disc = list(spec.discriminative_ids)
    for r in read_manifest(reference / MANIFEST_NAME):
        image = decode_png(reference / r.files["image"], "image")
        mask = decode_png(reference / r.files["mask"], "mask")
        parts = decode_png(reference / r.files["parts"], "parts")
        assert image.shape == (SIZE, SIZE, 3) and mask.shape == parts.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(mask, np.isin(parts, disc))
        assert mask.any(), f"sample {r.index}: empty mask"
        assert parts.max() < len(spec.parts)


def test_class_colours_inside_the_mask(tmp_path):
    """Each class's discriminative parts carry that class's colour: the median of the mask pixels
    of each discriminative part is nearer (in chromaticity) to the class colour than to any other
    class colour of that part; the manifest's sampled colour names follow the class rule."""
    spec = load_spec("double-12c")
    root = tmp_path / "d12"
    generate(spec, root, size=96, per_class=3, seed=0, workers=1, progress=False)
    for r in read_manifest(root / MANIFEST_NAME):
        image = decode_png(root / r.files["image"], "image").astype(float)
        parts = decode_png(root / r.files["parts"], "parts")
        for j, part in enumerate(spec.discriminative):
            want = spec.class_colours[r.label][j]
            assert r.meta[f"{part}_colour"] == want
            options = sorted({cols[j] for cols in spec.class_colours})
            pixels = image[parts == spec.part_id(part)]
            median = np.median(pixels, axis=0)
            chroma = median / max(median.sum(), 1e-9)
            refs = np.array([spec.rgb(name) for name in options], float)
            dist = np.abs(chroma - refs / refs.sum(axis=1, keepdims=True)).sum(axis=1)
            assert options[int(dist.argmin())] == want, (r.index, part, median)


# ------------------------------------------------------------------------------ determinism


def test_two_workers_write_identical_bytes(reference, tmp_path):
    root = tmp_path / "w2"
    result = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=2, progress=False)
    assert result.manifest_sha256 == sha256_file(reference / MANIFEST_NAME)
    assert tree(root) == tree(reference)


def test_shards_combine_into_identical_bytes(reference, tmp_path):
    root = tmp_path / "sharded"
    first = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard="2/2", progress=False)
    assert not first.complete and first.chunks_done < first.chunks_total
    assert not (root / DATASET_JSON).exists() and not (root / MANIFEST_NAME).exists()
    second = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard=(1, 2), progress=False)
    assert second.complete and second.rendered + first.rendered == 6 * PER_CLASS
    assert tree(root) == tree(reference)


def test_three_shards_finished_by_a_plain_call(reference, tmp_path):
    root = tmp_path / "sharded3"
    for i in (1, 3):
        assert not generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1,
                            shard=f"{i}/3", progress=False).complete
    final = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    assert final.complete
    n_chunks = final.chunks_total
    # the plain call rendered exactly shard 2's chunks and skipped the others
    assert final.rendered == len(range(1, n_chunks, 3)) * chunk_size(6 * PER_CLASS)
    assert tree(root) == tree(reference)


def test_other_seed_gives_other_content(reference, tmp_path):
    other = generate("single-6c", tmp_path / "s4", size=SIZE, per_class=PER_CLASS, seed=4, workers=1, progress=False)
    info = json.loads((reference / DATASET_JSON).read_text())
    assert other.content_sha256 != info["content_sha256"]


# ------------------------------------------------------------------------------ resume


def test_resume_after_interruption(reference, tmp_path, monkeypatch):
    import an8flower.generate as gen

    root = tmp_path / "interrupted"
    original = gen._ChunkWriter.__call__
    calls = {"n": 0}

    def flaky(self, chunk_id):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original(self, chunk_id)

    monkeypatch.setattr(gen._ChunkWriter, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    monkeypatch.setattr(gen._ChunkWriter, "__call__", original)
    assert not (root / DATASET_JSON).exists() and (root / WORK_DIR).is_dir()

    rows_dir = root / WORK_DIR / "rows"
    journals = sorted(rows_dir.iterdir())
    assert len(journals) == 9
    # more damage: a chunk whose row file is lost, a written image that vanished, and a temporary
    # file left by a killed writer
    journals[0].unlink()
    rows_of_chunk_4 = json.loads(journals[4].read_text())
    (root / rows_of_chunk_4[0]["image"]).unlink()
    stray = root / "images" / "train" / "00-centre-red" / ".000000.png.999-deadbeef.tmp"
    stray.write_bytes(b"half a png")

    resumed = generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    assert resumed.complete
    assert resumed.skipped == 7  # 9 complete chunks minus the two damaged ones (1 sample each)
    assert resumed.rendered == 6 * PER_CLASS - 7
    assert tree(root) == tree(reference)


@pytest.mark.parametrize("existing", [False, True])
def test_spec_error_while_rendering_leaves_nothing(tmp_path, monkeypatch, existing):
    """A spec that fails on a later sample (after chunks were written) leaves the file system as
    it was: the new folder (and the parents this call created) is removed, an existing empty
    folder is emptied again."""
    import an8flower.generate as gen
    from an8flower.errors import SpecError

    original = gen._ChunkWriter.__call__

    def fails_on_chunk_5(self, chunk_id):
        if chunk_id == 5:
            raise SpecError("spec 'single-6c': discriminative parts not visible enough (sample 5)")
        return original(self, chunk_id)

    monkeypatch.setattr(gen._ChunkWriter, "__call__", fails_on_chunk_5)
    out = tmp_path / "new-parent" / "out"
    if existing:
        out.mkdir(parents=True)
    with pytest.raises(SpecError, match="sample 5"):
        generate("single-6c", out, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    assert tree(tmp_path) == {}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == (
        ["new-parent", "new-parent/out"] if existing else [])


def test_spec_error_in_a_shard_keeps_the_finished_chunks(tmp_path, monkeypatch):
    """A shard may share its folder with other shards: it never deletes on error."""
    import an8flower.generate as gen
    from an8flower.errors import SpecError

    original = gen._ChunkWriter.__call__

    def fails_on_chunk_4(self, chunk_id):
        if chunk_id == 4:
            raise SpecError("spec 'single-6c': not drawable")
        return original(self, chunk_id)

    monkeypatch.setattr(gen._ChunkWriter, "__call__", fails_on_chunk_4)
    out = tmp_path / "out"
    with pytest.raises(SpecError):
        generate("single-6c", out, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard="1/2", progress=False)
    assert sorted(p.name for p in (out / WORK_DIR / "rows").iterdir()) == ["chunk-000000.json", "chunk-000002.json"]


def test_rerun_of_a_complete_dataset_renders_nothing(reference, tmp_path):
    before = tree(reference)
    again = generate("single-6c", reference, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, progress=False)
    assert again.complete and again.rendered == 0
    assert tree(reference) == before


def test_resume_with_other_parameters_is_refused(tmp_path):
    root = tmp_path / "partial"
    generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard="1/2", progress=False)
    before = tree(root)
    with pytest.raises(UsageError, match="seed 3"):
        generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=5, workers=1, progress=False)
    assert tree(root) == before


def test_resume_by_other_renderer_code_is_refused(tmp_path, monkeypatch):
    import an8flower.generate as gen

    root = tmp_path / "partial"
    generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard="1/2", progress=False)
    plan = json.loads((root / WORK_DIR / "plan.json").read_text())
    assert plan["code_sha256"] == gen.code_sha256()
    monkeypatch.setattr(gen, "code_sha256", lambda: "0" * 64)
    with pytest.raises(UsageError, match="code_sha256"):
        generate("single-6c", root, size=SIZE, per_class=PER_CLASS, seed=3, workers=1, shard="2/2", progress=False)
