"""Variant specs: built-ins, serialisation round trips, spec files, validation errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from an8flower.errors import SpecError, UsageError
from an8flower.spec import Nuisance, VariantSpec, builtin_variants, load_spec

# A user's spec file: 3 classes decided by the petal colour, written by hand in TOML.
USER_TOML = """
name = "petals-3c"
size = 96
parts = ["background", "stem", "leaves", "petals", "centre"]
classes = ["petals-red", "petals-green", "petals-blue"]
discriminative = ["petals"]
description = "three classes by petal colour"

[colours]
red = [220, 30, 30]
green = [40, 170, 50]
blue = [40, 70, 225]
brown = [120, 80, 40]
sky = [150, 195, 235]

[class_colours]
petals-red = { petals = "red" }
petals-green = { petals = "green" }
petals-blue = { petals = "blue" }

[palettes.background]
sky = 1
[palettes.stem]
brown = 2
red = 1
green = 1
blue = 1
[palettes.leaves]
green = 1
red = 1
blue = 1
[palettes.centre]
brown = 1
red = 1
green = 1
blue = 1

[nuisance]
petal_count = [6, 8]
backgrounds = { plain = 1, noise = 2 }
"""


def _single_dict() -> dict:
    return load_spec("single-6c").to_dict()


def _write(tmp_path: Path, d: dict, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- built-ins


def test_builtin_variants_listed():
    assert builtin_variants() == ["double-12c", "single-6c"]


def test_single_6c_is_six_centre_colours():
    spec = load_spec("single-6c")
    assert spec.num_classes == 6
    assert spec.discriminative == ("centre",)
    assert spec.parts[0] == "background"
    assert {"stem", "leaves", "petals", "centre"} <= set(spec.parts)
    assert spec.classes == ("centre-red", "centre-yellow", "centre-green", "centre-cyan",
                            "centre-blue", "centre-magenta")
    assert spec.class_colour_rgb(0) == {"centre": (220, 30, 30)}
    assert spec.size == 224


def test_double_12c_is_centre_times_leaves():
    spec = load_spec("double-12c")
    assert spec.num_classes == 12
    assert spec.discriminative == ("centre", "leaves")
    pairs = {tuple(c) for c in spec.class_colours}
    assert len(pairs) == 12  # every combination names one class
    centres = {c for c, _ in pairs}
    leaves = {leaf for _, leaf in pairs}
    assert (len(centres), len(leaves)) == (4, 3)
    assert spec.classes[0] == "centre-red_leaves-green"
    assert spec.class_colours[spec.classes.index("centre-blue_leaves-purple")] == ("blue", "purple")
    assert spec.nuisance.leaf_count[0] >= 1


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_nuisance_palettes_contain_every_class_colour(variant):
    spec = load_spec(variant)
    class_cols = {c for cols in spec.class_colours for c in cols}
    for part, pal in spec.palettes:
        if part in ("background", "clutter"):
            continue
        assert class_cols <= {c for c, _ in pal}, part


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_class_names_are_filesystem_safe(variant):
    for c in load_spec(variant).classes:
        assert c and "/" not in c and "\\" not in c and " " not in c and not c.startswith(".")


# ----------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_round_trip_dict_and_json(variant):
    spec = load_spec(variant)
    assert VariantSpec.from_dict(spec.to_dict()) == spec
    again = VariantSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec
    assert again.to_json() == spec.to_json()
    assert spec.sha256() == hashlib.sha256(spec.to_json().encode()).hexdigest()


def test_canonical_json_is_sorted_and_compact():
    text = load_spec("single-6c").to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert "\n" not in text and ": " not in text


def test_same_spec_from_reordered_file_gives_same_bytes(tmp_path):
    d = _single_dict()
    reordered = dict(reversed(list(d.items())))
    reordered["colours"] = dict(reversed(list(d["colours"].items())))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(reordered, indent=4), encoding="utf-8")
    spec = load_spec(path)
    assert spec.to_json() == load_spec("single-6c").to_json()
    assert spec.sha256() == load_spec("single-6c").sha256()


def test_with_size_changes_size_and_hash_only():
    spec = load_spec("single-6c")
    small = spec.with_size(112)
    assert small.size == 112 and spec.size == 224
    assert small.sha256() != spec.sha256()
    assert small.with_size(224) == spec
    for bad in (63, 513, 100.0, "224", True):
        with pytest.raises(UsageError, match="size"):
            spec.with_size(bad)


def test_nuisance_defaults_fill_missing_fields():
    d = _single_dict()
    d["nuisance"] = {"petal_count": [7, 7]}
    spec = VariantSpec.from_dict(d)
    assert spec.nuisance.petal_count == (7, 7)
    assert spec.nuisance.scale == Nuisance().scale


def test_toml_user_spec_loads(tmp_path):
    path = tmp_path / "petals.toml"
    path.write_text(USER_TOML, encoding="utf-8")
    spec = load_spec(path)
    assert spec.name == "petals-3c" and spec.size == 96
    assert spec.classes == ("petals-red", "petals-green", "petals-blue")
    assert spec.discriminative == ("petals",)
    assert spec.class_colour_rgb(2) == {"petals": (40, 70, 225)}
    assert spec.nuisance.backgrounds == (("noise", 2.0), ("plain", 1.0))
    assert spec.nuisance.petal_count == (6, 8)
    assert "clutter" not in spec.parts
    # the same spec written as JSON loads to an equal spec
    assert load_spec(_write(tmp_path, spec.to_dict())) == spec


# ----------------------------------------------------------------------------- errors


def _error_for(tmp_path: Path, d: dict) -> str:
    path = _write(tmp_path, d)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


def test_missing_field(tmp_path):
    d = _single_dict()
    del d["classes"]
    assert "'classes'" in _error_for(tmp_path, d) and "missing" in _error_for(tmp_path, d)


def test_wrong_type(tmp_path):
    d = _single_dict()
    d["size"] = "big"
    assert "'size'" in _error_for(tmp_path, d)
    d = _single_dict()
    d["nuisance"]["petal_count"] = [3.5, 6]
    assert "nuisance.petal_count" in _error_for(tmp_path, d)
    d = _single_dict()
    d["colours"]["red"] = [300, 0, 0]
    assert "colours.red" in _error_for(tmp_path, d)


def test_unknown_part(tmp_path):
    d = _single_dict()
    d["parts"] = d["parts"] + ["thorns"]
    assert "thorns" in _error_for(tmp_path, d)
    d = _single_dict()
    d["discriminative"] = ["sepals"]
    assert "sepals" in _error_for(tmp_path, d)


def test_unknown_field(tmp_path):
    d = _single_dict()
    d["nuisance"]["wind"] = [0, 1]
    assert "nuisance.wind" in _error_for(tmp_path, d)


def test_class_rule_inconsistent_with_palettes(tmp_path):
    # a class colour that is not a known colour
    d = _single_dict()
    d["class_colours"]["centre-red"] = {"centre": "crimson"}
    msg = _error_for(tmp_path, d)
    assert "class_colours.centre-red.centre" in msg and "crimson" in msg
    # two classes with the same colours: the class would not be a function of the colours
    d = _single_dict()
    d["class_colours"]["centre-red"] = {"centre": "yellow"}
    msg = _error_for(tmp_path, d)
    assert "centre-yellow" in msg and "same part colours" in msg
    # a class giving a non-discriminative part
    d = _single_dict()
    d["class_colours"]["centre-red"] = {"centre": "red", "petals": "red"}
    assert "class_colours.centre-red" in _error_for(tmp_path, d)
    # a class without a rule
    d = _single_dict()
    del d["class_colours"]["centre-blue"]
    assert "class_colours.centre-blue" in _error_for(tmp_path, d)
    # a nuisance palette lacking a class colour would let that colour's presence leak the class
    d = _single_dict()
    del d["palettes"]["petals"]["magenta"]
    msg = _error_for(tmp_path, d)
    assert "palettes.petals" in msg and "magenta" in msg
    # a palette for a discriminative part
    d = _single_dict()
    d["palettes"]["centre"] = {"red": 1}
    assert "palettes.centre" in _error_for(tmp_path, d)


def test_bad_ranges(tmp_path):
    d = _single_dict()
    d["nuisance"]["scale"] = [1.2, 0.9]
    assert "min > max" in _error_for(tmp_path, d)
    d = _single_dict()
    d["nuisance"]["backgrounds"] = {"starfield": 1}
    assert "starfield" in _error_for(tmp_path, d)
    d = load_spec("double-12c").to_dict()
    d["nuisance"]["leaf_count"] = [0, 2]
    assert "nuisance.leaf_count" in _error_for(tmp_path, d)


def test_unknown_variant_and_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="unknown variant 'single-7c'"):
        load_spec("single-7c")
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "absent.json")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [unclosed", encoding="utf-8")
    with pytest.raises(SpecError, match="broken.toml.*not valid TOML"):
        load_spec(broken)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(SpecError, match="broken.json.*not valid JSON"):
        load_spec(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SpecError, match="list.json"):
        load_spec(listed)


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_class_colours_stay_unambiguous_under_jitter_and_lighting(variant):
    """Every class colour, pushed to the spec's extremes of colour jitter, lighting and tint, is
    still nearest (in chromaticity ``rgb / (r + g + b)``) to itself among its part's colours."""
    import itertools

    import numpy as np

    spec = load_spec(variant)
    nz = spec.nuisance
    jit, light, tint = nz.class_jitter[1], nz.illumination[1], nz.tint[1]
    for j, part in enumerate(spec.discriminative):
        names = sorted({cols[j] for cols in spec.class_colours})
        rgb = np.array([spec.rgb(n) for n in names], np.float64)
        refs = rgb / rgb.sum(axis=1, keepdims=True)
        for i, base in enumerate(rgb):
            for dj in itertools.product((-jit, jit), repeat=3):
                for g in (1 - light, 1 + light):
                    for dt in itertools.product((-tint, tint), repeat=3):
                        c = np.clip(np.clip(base + dj, 0, 255) * g * (1 + np.array(dt)), 0, 255)
                        c = c / c.sum()
                        assert np.argmin(np.abs(refs - c).sum(axis=1)) == i, (part, names[i])


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_builtin_files_spell_out_every_field(variant):
    """Built-in spec files do not lean on code defaults: changing a default cannot change them."""
    import dataclasses
    from importlib import resources

    raw = json.loads((resources.files("an8flower") / "specs" / f"{variant}.json").read_text())
    assert set(raw["nuisance"]) == {f.name for f in dataclasses.fields(Nuisance)}
    assert raw == load_spec(variant).to_dict()
