"""The dataset commands of the CLI: generate (errors leave nothing behind), verify, show, cite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from an8flower.cli import main
from an8flower.defaults import DATASET_PER_CLASS as CLI_DEFAULT_PER_CLASS
from an8flower.layout import DEFAULT_PER_CLASS
from an8flower.manifest import DATASET_JSON, MANIFEST_NAME, decode_png, read_manifest
from an8flower.show import mask_overlay
from an8flower.spec import load_spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "ds"
    assert main(["generate", "single-6c", "--out", str(root), "--size", "64", "--per-class", "4",
                 "--seed", "2", "--workers", "1"]) == 0
    return root


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a one-line error; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("an8flower: error: ")
    return lines[0]


# ------------------------------------------------------------------------------ generate


def test_generate_prints_hashes(dataset, capsys):
    info = json.loads((dataset / DATASET_JSON).read_text())
    assert main(["generate", "single-6c", "--out", str(dataset), "--size", "64", "--per-class", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out
    assert info["manifest_sha256"] in out and info["content_sha256"] in out


def test_cli_default_per_class_is_the_generators():
    assert CLI_DEFAULT_PER_CLASS == DEFAULT_PER_CLASS


def test_generate_from_toml_spec_file(tmp_path, capsys):
    """A user's spec file generates, gets a generated data card naming its spec hash."""
    spec = load_spec("single-6c").to_dict()
    spec["name"] = "my-flowers"
    lines = [f'name = "{spec["name"]}"', f"size = {spec['size']}", f"parts = {json.dumps(spec['parts'])}",
             f"classes = {json.dumps(spec['classes'])}", f"discriminative = {json.dumps(spec['discriminative'])}"]
    for table in ("colours", "palettes"):
        for key, value in spec[table].items():
            lines.append(f"[{table}]" if key == next(iter(spec[table])) else "")
            if table == "colours":
                lines.append(f"{key} = {json.dumps(value)}")
            else:
                lines.append(f"{key} = {{ " + ", ".join(f'{c} = {w}' for c, w in value.items()) + " }")
    lines.append("[class_colours]")
    for c, parts in spec["class_colours"].items():
        lines.append(f'"{c}" = {{ ' + ", ".join(f'{p} = "{v}"' for p, v in parts.items()) + " }")
    path = tmp_path / "mine.toml"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mine"
    assert main(["generate", str(path), "--out", str(out), "--size", "64", "--per-class", "3", "--workers", "1"]) == 0
    info = json.loads((out / DATASET_JSON).read_text())
    assert info["variant"] == "my-flowers"
    card = (out / info["data_card"]).read_text()
    assert "my-flowers" in card and load_spec(path).with_size(64).sha256() in card


@pytest.mark.parametrize(
    "args, needle",
    [
        (["nosuch-variant"], "unknown variant 'nosuch-variant'"),
        (["{bad_json}"], "bad.json: not valid JSON"),
        (["{bad_field}"], "field.json: spec field 'classes'"),
        (["{missing_file}"], "missing.json: spec file not found"),
        (["single-6c", "--size", "20"], "size 20"),
        (["single-6c", "--size", "600"], "size 600"),
        (["single-6c", "--size", "big"], "--size 'big'"),
        (["single-6c", "--per-class", "2"], "per-class 2"),
        (["single-6c", "--shard", "0/2"], "--shard '0/2'"),
        (["single-6c", "--shard", "3/2"], "--shard '3/2'"),
        (["single-6c", "--shard", "half"], "--shard 'half'"),
        (["single-6c", "--workers", "0"], "--workers 0"),
        (["single-6c", "--seed", "-1"], "--seed -1"),
        (["{undrawable}", "--size", "64"], "undrawable.json: spec 'single-6c': discriminative parts not visible"),
    ],
)
def test_generate_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    (tmp_path / "bad.json").write_text("{not json")
    spec = load_spec("single-6c").to_dict()
    spec["classes"] = ["only-one"]
    (tmp_path / "field.json").write_text(json.dumps(spec))
    spec = load_spec("single-6c").to_dict()
    spec["nuisance"]["min_visible_area"] = 0.2  # valid field values that no draw can meet
    (tmp_path / "undrawable.json").write_text(json.dumps(spec))
    subs = {"{bad_json}": str(tmp_path / "bad.json"), "{bad_field}": str(tmp_path / "field.json"),
            "{missing_file}": str(tmp_path / "missing.json"), "{undrawable}": str(tmp_path / "undrawable.json")}
    args = [subs.get(a, a) for a in args]
    before = listing(tmp_path)
    line = run_error(capsys, ["generate", *args, "--out", str(tmp_path / "out")])
    assert needle in line
    assert listing(tmp_path) == before


def test_generate_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = run_error(capsys, ["generate", "single-6c", "--out", str(blocker / "sub" / "out")])
    assert str(blocker) in line and "not a folder" in line
    line = run_error(capsys, ["generate", "single-6c", "--out", str(blocker)])
    assert "exists and is not a folder" in line
    assert listing(tmp_path) == ["a-file"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_generate_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = run_error(capsys, ["generate", "single-6c", "--out", str(ro / "out")])
        assert "cannot write" in line and str(ro) in line
        assert listing(ro) == []
    finally:
        ro.chmod(0o755)


def test_generate_refuses_unrelated_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    line = run_error(capsys, ["generate", "single-6c", "--out", str(tmp_path)])
    assert "not empty and not an an8flower dataset" in line
    assert listing(tmp_path) == ["mine.txt"]


def test_generate_refuses_other_parameters(dataset, capsys):
    before = listing(dataset)
    line = run_error(capsys, ["generate", "single-6c", "--out", str(dataset), "--size", "64", "--per-class", "4",
                              "--seed", "9"])
    assert "other parameters" in line and "seed 2 (asked: 9)" in line
    assert listing(dataset) == before


# ------------------------------------------------------------------------------ verify


def test_verify_ok(dataset, capsys):
    assert main(["verify", str(dataset)]) == 0
    assert "OK, 72 files" in capsys.readouterr().out


def test_verify_fails_naming_each_problem(dataset, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    rows = read_manifest(root / MANIFEST_NAME)
    flipped, deleted = rows[3].files["parts"], rows[7].files["image"]
    data = bytearray((root / flipped).read_bytes())
    data[-20] ^= 0x80
    (root / flipped).write_bytes(bytes(data))
    (root / deleted).unlink()
    (root / "masks" / "test" / "extra.png").write_bytes(b"png?")
    assert main(["verify", str(root)]) == 1
    captured = capsys.readouterr()
    assert set(captured.out.splitlines()) == {f"changed: {flipped}", f"missing: {deleted}", "extra: masks/test/extra.png"}
    assert "1 missing, 1 changed, 1 extra" in captured.err


def test_verify_not_a_dataset(tmp_path, capsys):
    line = run_error(capsys, ["verify", str(tmp_path)])
    assert str(tmp_path) in line and "dataset.json is missing" in line


# ------------------------------------------------------------------------------ show


def _find(sheet: np.ndarray, block: np.ndarray) -> tuple[int, int]:
    """Top-left corner of an exact copy of ``block`` in ``sheet`` (or AssertionError)."""
    h, w = block.shape[:2]
    first = block[0].tobytes()
    for y in range(sheet.shape[0] - h + 1):
        row = sheet[y].tobytes()
        start = row.find(first)
        while start != -1:
            if start % 3 == 0:
                x = start // 3
                if np.array_equal(sheet[y:y + h, x:x + w], block):
                    return y, x
            start = row.find(first, start + 1)
    raise AssertionError("block not found in the contact sheet")


def test_mask_overlay_hand_computed():
    image = np.full((4, 4, 3), 200, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:4, 1:4] = True
    out = mask_overlay(image, mask, dim=0.25)
    assert (out[~mask] == 50).all()  # dimmed to a quarter
    assert (out[3, 3] == 255).all() and (out[1, 1] == 255).all()  # boundary (touches the image edge too)
    assert (out[2, 2] == 200).all()  # interior keeps its colour


def test_show_contact_sheet_holds_each_class(dataset, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["show", str(dataset), "--out", str(out), "--per-class", "1", "--thumb", "64", "--split", "test"]) == 0
    assert str(out) in capsys.readouterr().out
    sheet = np.asarray(Image.open(out).convert("RGB"))
    rows = [r for r in read_manifest(dataset / MANIFEST_NAME) if r.split == "test"]
    positions = []
    for r in rows:  # one test sample per class; thumb == size, so the images appear unscaled
        image = decode_png(dataset / r.files["image"], "image")
        mask = decode_png(dataset / r.files["mask"], "mask")
        y, x = _find(sheet, image)
        y2, x2 = _find(sheet, mask_overlay(image, mask))
        assert y2 == y and x2 > x  # the mask view sits beside its image
        positions.append(y)
    assert positions == sorted(positions) and len(set(positions)) == 6  # one row per class, in label order


def test_show_default_draws_the_first_samples_of_every_split(dataset, tmp_path, capsys):
    """--per-class 3 of a 4-per-class dataset: its test split holds 1 per class, so the default
    (all splits) is what gives 3: samples 0..17 (classes 0..5, ordinals 0..2), nothing later."""
    out = tmp_path / "sheet.png"
    assert main(["show", str(dataset), "--out", str(out), "--per-class", "3", "--thumb", "64"]) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    rows = read_manifest(dataset / MANIFEST_NAME)
    for r in rows[:18]:
        _find(sheet, decode_png(dataset / r.files["image"], "image"))
    for r in rows[18:]:
        with pytest.raises(AssertionError, match="not found"):
            _find(sheet, decode_png(dataset / r.files["image"], "image"))


def test_show_title_fits_on_the_sheet(dataset, tmp_path):
    """With one thumbnail per class the title is wider than the grid of thumbnails: the sheet
    widens, so the title's ink ends at least the margin before the right edge (it used to be cut)."""
    from an8flower.show import write_contact_sheet

    out = write_contact_sheet(dataset, tmp_path / "narrow.png", per_class=1, thumb=64)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    first = read_manifest(dataset / MANIFEST_NAME)[0]
    image = decode_png(dataset / first.files["image"], "image")
    mask = decode_png(dataset / first.files["mask"], "mask")
    top, _ = _find(sheet, image)
    _, overlay_x = _find(sheet, mask_overlay(image, mask))
    ink = np.nonzero((sheet[:top] != 255).any(axis=2).any(axis=0))[0]
    assert ink.max() > overlay_x + 64  # the case under test: the title is wider than the grid
    assert ink.max() < sheet.shape[1] - 3, (ink.max(), sheet.shape[1])


def test_show_rejects_bad_output(dataset, tmp_path, capsys):
    line = run_error(capsys, ["show", str(dataset), "--out", str(tmp_path / "sheet.jpg")])
    assert "sheet.jpg" in line
    (tmp_path / "a-file").write_text("x")
    line = run_error(capsys, ["show", str(dataset), "--out", str(tmp_path / "a-file" / "sheet.png")])
    assert "cannot write" in line and "a-file" in line
    assert listing(tmp_path) == ["a-file"]


def test_show_creates_missing_folders_like_generate(dataset, tmp_path, capsys):
    """`generate --out a/b/c` creates the parents; so does `show --out` (it used to refuse)."""
    out = tmp_path / "new" / "deeper" / "sheet.png"
    assert main(["show", str(dataset), "--out", str(out), "--per-class", "1", "--thumb", "16"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"
    assert listing(tmp_path) == ["new", "new/deeper", "new/deeper/sheet.png"]
    line = run_error(capsys, ["show", str(tmp_path / "not-a-dataset"), "--out", str(tmp_path / "other" / "s.png")])
    assert "no such dataset folder" in line
    assert not (tmp_path / "other").exists()  # nothing created when the sheet cannot be built


# ------------------------------------------------------------------------------ cite


def _entries(bib: str) -> dict[str, str]:
    """Parse ``@type{key, ...}`` entries, checking that braces balance."""
    entries = {}
    for m in re.finditer(r"@(\w+)\{([^,\s]+),", bib):
        depth, i = 1, bib.index("{", m.start()) + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(bib[i], 0)
            i += 1
        entries[m.group(2)] = m.group(1) + ":" + bib[m.end():i - 1]
    return entries


def test_cite_prints_both_entries(capsys):
    assert main(["cite"]) == 0
    out = capsys.readouterr().out
    entries = _entries(out)
    assert set(entries) == {"oramas2019visual", "an8flower_v0_1_0"}
    paper = entries["oramas2019visual"]
    assert paper.startswith("inproceedings:")
    for needle in ("Visual Explanation by Interpretation", "Oramas", "Wang, Kaili", "Tuytelaars, Tinne",
                   "year          = {2019}", "1712.06302", "International Conference on Learning Representations"):
        assert needle in paper
    software = entries["an8flower_v0_1_0"]
    assert software.startswith("software:") and "version = {0.1.0}" in software
    assert "single-6c" in software and "double-12c" in software
    assert out.count("{") == out.count("}")


def test_cite_variant_and_dataset(dataset, capsys):
    assert main(["cite", "--variant", "double-12c", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert load_spec("double-12c").sha256() in out and "seed 5" in out
    assert main(["cite", "--dataset", str(dataset)]) == 0
    out = capsys.readouterr().out
    info = json.loads((dataset / DATASET_JSON).read_text())
    assert info["manifest_sha256"] in out and info["content_sha256"] in out
    line = run_error(capsys, ["cite", "--seed", "1"])
    assert "--seed needs --variant" in line


def test_dataset_commands_do_not_import_torch():
    code = (
        "import sys, argparse\n"
        "import an8flower.cli.dataset as c, an8flower.cite as cite\n"
        "p = argparse.ArgumentParser(); c.register(p.add_subparsers())\n"
        "cite.bibtex('single-6c', 1)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
