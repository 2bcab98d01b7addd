"""Interventions: the API, its errors, the batched helper and the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from an8flower.errors import UsageError
from an8flower.intervene import (
    UNDEFINED,
    Intervention,
    class_for_colours,
    farthest_nonclass_colour,
    intervene,
    intervene_many,
)
from an8flower.render import class_of, render, render_as
from an8flower.spec import load_spec

#: meta keys that an intervention may change (the others are the nuisance: pose, lighting, ...).
_CHANGEABLE = {"label", "class", "original_label", "intervention"}


def _digest(s) -> str:
    h = hashlib.sha256()
    for a in (s.image, s.mask, s.parts):
        h.update(a.tobytes())
    return h.hexdigest()


def _nuisance(meta: dict, parts=()) -> dict:
    skip = _CHANGEABLE | {f"{p}_{x}" for p in parts for x in ("colour", "rgb", "visible_px")}
    if "background" in parts:
        skip.add("background_colours")
    return {k: v for k, v in meta.items() if k not in skip}


@pytest.fixture(scope="module", params=["single-6c", "double-12c"])
def spec(request):
    return load_spec(request.param)


def test_no_change_is_the_render(spec):
    for index in (0, 7, 13):
        s = intervene(spec, 2, index, 96)
        r = render(spec, 2, index, 96)
        assert _digest(s) == _digest(r) and s.label == r.label
        assert s.meta["intervention"] == {"label": None, "recolour": {}, "remove": []}
        assert _nuisance(s.meta) == _nuisance(r.meta)


def test_label_is_the_private_counterfactual(spec):
    index = 5
    for b in (0, spec.num_classes - 1):
        s = intervene(spec, 1, index, 64, label=b)
        assert _digest(s) == _digest(render_as(spec, 1, index, 64, b))
        assert s.label == b and s.meta["class"] == spec.classes[b] and s.meta["original_label"] == class_of(spec, index)
        assert s.meta["intervention"]["label"] == b
    by_name = intervene(spec, 1, index, 64, label=spec.classes[2])
    assert by_name.label == 2


def test_recolour_sets_the_base_colour_before_jitter():
    """A recoloured part's drawn RGB is the given colour plus the same jitter the original had."""
    spec = load_spec("double-12c")
    for index in range(6):
        r = render(spec, 0, index, 64)
        jitter = np.array(r.meta["petals_rgb"]) - np.array(spec.rgb(r.meta["petals_colour"]))
        s = intervene(spec, 0, index, 64, recolour={"petals": (100, 120, 140)})
        assert s.meta["petals_colour"] == "rgb(100,120,140)"
        assert s.meta["petals_rgb"] == list(np.clip(np.array([100, 120, 140]) + jitter, 0, 255))
        named = intervene(spec, 0, index, 64, recolour={"petals": spec.rgb("pink")})
        assert named.meta["petals_colour"] == "pink"  # an RGB equal to a spec colour takes its name
        assert _digest(named) == _digest(intervene(spec, 0, index, 64, recolour={"petals": "pink"}))


def test_geometry_stays_when_a_part_is_removed(spec):
    """Removing the petals: same pose and draws; the centre's inside is unchanged; leaves show more."""
    import cv2

    cid = spec.part_id("centre")
    for index in range(8):
        r = render(spec, 3, index, 112)
        s = intervene(spec, 3, index, 112, remove=["petals"])
        assert s.label == r.label and _nuisance(s.meta, ["petals", "leaves", "centre"]) == _nuisance(
            r.meta, ["petals", "leaves", "centre"])
        assert not (s.parts == spec.part_id("petals")).any() and (r.parts == spec.part_id("petals")).any()
        inner = cv2.erode((r.parts == cid).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert inner.sum() > 50 and np.array_equal(s.image[inner], r.image[inner])
        for part in spec.discriminative:
            assert s.meta[f"{part}_visible_px"] >= r.meta[f"{part}_visible_px"]


def test_removing_a_discriminative_part_needs_the_opt_in(spec):
    part = spec.discriminative[0]
    with pytest.raises(UsageError, match=f"remove '{part}'.*discriminative.*allow_invisible"):
        intervene(spec, 0, 3, 64, remove=[part])
    s = intervene(spec, 0, 3, 64, remove=[part], allow_invisible=True)
    assert s.label == UNDEFINED and s.meta["label"] is None and s.meta["class"] is None
    assert s.meta[f"{part}_visible_px"] == 0 and not (s.parts == spec.part_id(part)).any()
    assert s.meta["intervention"]["remove"] == [part]


def test_recolour_to_a_non_class_colour_is_undefined(spec):
    s = intervene(spec, 0, 4, 64, recolour={spec.discriminative[0]: "white"})
    assert s.label == UNDEFINED and s.meta["label"] is None
    r = render(spec, 0, 4, 64)
    assert np.array_equal(s.mask, r.mask) and np.array_equal(s.image[~r.mask], r.image[~r.mask])


@pytest.mark.parametrize("kwargs, match", [
    ({"recolour": {"sepals": "red"}}, "recolour 'sepals': unknown part"),
    ({"remove": ["roots"]}, "remove 'roots': unknown part"),
    ({"recolour": {"petals": "chartreuse"}}, "recolour petals='chartreuse': unknown colour"),
    ({"recolour": {"petals": (1, 2)}}, "three integers"),
    ({"recolour": {"petals": (1, 2, 300)}}, "three integers"),
    ({"recolour": {"petals": 7}}, "colour name or an"),
    ({"remove": ["background"]}, "background cannot be removed"),
    ({"remove": ["petals"], "recolour": {"petals": "red"}}, "also removed"),
    ({"label": 99}, "label 99"),
    ({"label": "centre-violet"}, "not a class"),
])
def test_bad_interventions_name_the_argument(kwargs, match):
    with pytest.raises(UsageError, match=match):
        intervene(load_spec("double-12c"), 0, 0, 64, **kwargs)


def test_bad_index_seed_size():
    spec = load_spec("single-6c")
    with pytest.raises(UsageError, match="index"):
        intervene(spec, 0, -1)
    with pytest.raises(UsageError, match="size"):
        intervene(spec, 0, 0, 600)


def test_class_for_colours():
    spec = load_spec("double-12c")
    assert class_for_colours(spec, {"centre": "blue", "leaves": "orange"}) == spec.classes.index(
        "centre-blue_leaves-orange")
    assert class_for_colours(spec, {"centre": "green", "leaves": "orange"}) is None  # green is a leaf colour
    assert class_for_colours(spec, {"centre": "blue", "leaves": None}) is None


def test_farthest_nonclass_colour_by_brute_force(spec):
    name = farthest_nonclass_colour(spec)
    class_cols = {c for cols in spec.class_colours for c in cols}
    assert name not in class_cols

    def margin(c):
        return min(sum((a - b) ** 2 for a, b in zip(spec.rgb(c), spec.rgb(k), strict=True)) for k in class_cols)

    others = [c for c, _ in spec.colours if c not in class_cols]
    assert margin(name) == max(margin(c) for c in others)
    assert name == "white"  # (245, 245, 240): the built-in tables' farthest from the hues


def test_intervene_many_is_ordered_and_worker_independent():
    spec = load_spec("double-12c")
    items = [(9, {"label": 0}), Intervention(2, recolour={"stem": "red"}), (4, {"remove": ["petals"]}),
             (9, {}), (1, {"remove": "centre", "allow_invisible": True})]
    one = intervene_many(spec, 5, items, 64, workers=1)
    two = intervene_many(spec, 5, items, 64, workers=2)
    assert [_digest(s) for s in one] == [_digest(s) for s in two]
    assert [json.dumps(s.meta, sort_keys=True) for s in one] == [json.dumps(s.meta, sort_keys=True) for s in two]
    assert _digest(one[0]) == _digest(intervene(spec, 5, 9, 64, label=0))
    assert _digest(one[3]) == _digest(render(spec, 5, 9, 64))
    assert one[4].label == UNDEFINED
    with pytest.raises(UsageError, match="unknown key 'colour'"):
        intervene_many(spec, 5, [(1, {"colour": "red"})], 64)
    with pytest.raises(UsageError, match="unknown part"):  # checked before any rendering
        intervene_many(spec, 5, [(1, {}), (2, {"remove": ["roots"]})], 64, workers=2)


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_original_counterfactual_and_difference(tmp_path, capsys):
    from PIL import Image

    from an8flower.cli import main

    out = tmp_path / "cf.png"
    rc = main(["intervene", "double-12c", "--index", "7", "--size", "64", "--label", "0",
               "--recolour", "stem=0,0,255", "--recolour", "petals=#ff0000", "--out", str(out)])
    assert rc == 0 and "label 7 -> 0" in capsys.readouterr().out
    sheet = np.asarray(Image.open(out).convert("RGB"))
    spec = load_spec("double-12c")
    orig = render(spec, 0, 7, 64)
    cf = intervene(spec, 0, 7, 64, label=0, recolour={"stem": (0, 0, 255), "petals": (255, 0, 0)})
    assert cf.meta["petals_colour"] == "rgb(255,0,0)"
    # the panels are the images enlarged 4x (nearest), the original first, near the top left
    big, big_cf = (np.kron(x.image, np.ones((4, 4, 1), np.uint8)) for x in (orig, cf))
    found = [(y, x) for y in range(60) for x in range(40) if np.array_equal(sheet[y:y + 256, x:x + 256], big)]
    assert len(found) == 1
    y, x = found[0]
    assert any(np.array_equal(sheet[y:y + 256, j:j + 256], big_cf) for j in range(x + 256, sheet.shape[1] - 255))
    assert not list(tmp_path.glob(".*"))  # nothing half-written left behind


@pytest.mark.parametrize("argv, match", [
    (["--index", "1", "--recolour", "petals"], "expected PART=COLOUR"),
    (["--index", "1", "--recolour", "petals=1,2"], "three integers"),
    (["--index", "1", "--recolour", "petals=#12"], "#rrggbb"),
    (["--index", "1", "--remove", "centre"], "allow_invisible"),
    (["--index", "1", "--label", "centre-violet"], "not a class"),
    (["--index=-3"], "--index"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, match):
    from an8flower.cli import main

    rc = main(["intervene", "double-12c", *argv, "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_cli_out_must_be_a_png_in_an_existing_folder(tmp_path):
    from an8flower.cli import main

    assert main(["intervene", "single-6c", "--index", "0", "--out", str(tmp_path / "x.jpg")]) == 2
    assert main(["intervene", "single-6c", "--index", "0", "--out", str(tmp_path / "no" / "x.png")]) == 2


def test_registration_is_light_and_listed():
    import subprocess
    import sys

    code = ("import sys, argparse, an8flower.cli.dataset as m; p = argparse.ArgumentParser(); "
            "m.register(p.add_subparsers()); print(sorted(k for k in ('torch', 'cv2', 'PIL') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from an8flower.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "intervene" in sub.choices


def test_top_level_exports():
    import an8flower
    import an8flower.intervene  # the submodule import must not hide the function

    assert an8flower.intervene_sample is intervene and an8flower.intervene_many is intervene_many
    assert an8flower.Intervention is Intervention
