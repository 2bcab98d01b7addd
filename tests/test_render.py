"""The renderer: purity, shapes, masks vs part maps, class colours, counterfactual invariance."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from an8flower.errors import UsageError
from an8flower.render import Sample, class_of, render, render_as
from an8flower.spec import load_spec

VARIANTS = ["single-6c", "double-12c"]


def _digest(s: Sample) -> str:
    h = hashlib.sha256()
    for a in (s.image, s.mask, s.parts):
        h.update(a.tobytes())
    h.update(json.dumps(s.meta, sort_keys=True).encode())
    return h.hexdigest()


@pytest.fixture(scope="module", params=VARIANTS)
def spec(request):
    return load_spec(request.param)


# ----------------------------------------------------------------------------- purity


def test_same_arguments_same_bytes(spec):
    a, b = render(spec, 7, 3), render(spec, 7, 3)
    assert _digest(a) == _digest(b)
    assert not np.array_equal(render(spec, 7, 3).image, render(spec, 7, 3 + spec.num_classes).image)
    assert not np.array_equal(render(spec, 7, 3).image, render(spec, 8, 3).image)


def test_no_dependence_on_call_order_or_global_rng(spec):
    alone = _digest(render(spec, 0, 5, 112))
    for i in range(12):
        render(spec, 0, i, 64)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    after = _digest(render(spec, 0, 5, 112))
    assert after == alone
    assert np.array_equal(np.random.get_state()[1], state)  # global state untouched


def test_same_bytes_in_another_process():
    code = (
        "import hashlib, json; from an8flower.spec import load_spec; "
        "from an8flower.render import render\n"
        "for v in ('single-6c', 'double-12c'):\n"
        "    s = render(load_spec(v), 3, 5, 96); h = hashlib.sha256()\n"
        "    [h.update(a.tobytes()) for a in (s.image, s.mask, s.parts)]\n"
        "    h.update(json.dumps(s.meta, sort_keys=True).encode()); print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = [_digest(render(load_spec(v), 3, 5, 96)) for v in VARIANTS]
    assert out.stdout.split() == here


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("size", [64, 112, 224, 512])
def test_shapes_and_dtypes(spec, size):
    s = render(spec, 1, 4, size)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (size, size) and s.mask.dtype == bool
    assert s.parts.shape == (size, size) and s.parts.dtype == np.uint8
    assert int(s.parts.max()) < len(spec.parts)
    assert s.label == 4 % spec.num_classes and s.meta["size"] == size
    assert render(spec.with_size(size), 1, 4).image.shape == (size, size, 3)


def test_default_size_is_spec_size(spec):
    assert render(spec, 0, 0).image.shape == (spec.size, spec.size, 3)


@pytest.mark.parametrize("size", [63, 513, 0, -224, 112.0, "112", True])
def test_bad_size(spec, size):
    with pytest.raises(UsageError, match="size"):
        render(spec, 0, 0, size)


def test_bad_seed_or_index(spec):
    with pytest.raises(UsageError, match="index"):
        render(spec, 0, -1)
    with pytest.raises(UsageError, match="seed"):
        render(spec, -5, 0)


def test_class_of_is_balanced(spec):
    k = spec.num_classes
    labels = [class_of(spec, i) for i in range(7 * k)]
    assert labels[: k + 2] == list(range(k)) + [0, 1]
    assert Counter(labels) == {c: 7 for c in range(k)}


def test_meta_is_plain_json(spec):
    s = render(spec, 2, 9, 64)
    text = json.dumps(s.meta)
    assert json.loads(text) == s.meta
    assert s.meta["label"] == s.label and s.meta["class"] == spec.classes[s.label]
    for part in spec.discriminative:
        assert s.meta[f"{part}_visible_px"] == int((s.parts == spec.part_id(part)).sum())


# ----------------------------------------------------------------------------- masks and parts


def test_mask_is_discriminative_part_pixels_and_visible(spec):
    ids = np.array(spec.discriminative_ids)
    for size in (64, 112):
        min_px = spec.nuisance.min_visible_area * size * size
        for i in range(60):
            s = render(spec, 11, i, size)
            assert np.array_equal(s.mask, np.isin(s.parts, ids))
            for k in ids:
                assert (s.parts == k).sum() >= min_px


def test_centre_is_readable_at_112px(spec):
    for i in range(100):
        m = render(spec, 5, i, 112).meta
        assert m["centre_radius"] * 112 >= 6.0  # the long axis
        assert m["centre_radius"] * m["head_squash"] * 112 >= 4.8  # foreshortened short axis
        assert m["centre_visible_px"] >= 0.5 * np.pi * 6.0 * 4.8


def test_occlusion_happens_and_mask_follows_it():
    """Some samples have their discriminative part partly hidden; the mask shows only the rest."""
    spec = load_spec("double-12c")
    k = spec.part_id("leaves")
    hidden = 0
    for i in range(80):
        s = render(spec, 0, i, 64)
        touched = _leaf_footprint(spec, i, s.meta["attempt"])
        assert not (s.parts == k)[~touched].any()  # the leaves' label stays on what they drew
        # the pixels the leaves drew are more than what stays visible of them
        if s.meta["leaves_visible_px"] < 0.97 * touched.sum():
            hidden += 1
    assert hidden >= 10


def _leaf_footprint(spec, index, attempt):
    """The pixels the leaves of sample ``index`` drew (before anything was drawn over them)."""
    from an8flower import render as r

    d = r._Draws(np.random.default_rng([0, index, attempt]))
    painter, _, _ = r._draw_scene(spec, d, class_of(spec, index), 64)
    return painter.foot[spec.part_id("leaves")] > 0


def _chroma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), 1.0)


def test_every_class_shows_its_colours(spec):
    """The median colour of each discriminative part's pixels is nearest its class colour.

    Lighting multiplies the three channels by nearly the same factor, so colours are compared by
    chromaticity ``rgb / (r + g + b)`` against every colour that part takes in any class.
    """
    k = spec.num_classes
    for j, part in enumerate(spec.discriminative):
        names = sorted({cols[j] for cols in spec.class_colours})
        refs = _chroma([spec.rgb(n) for n in names])
        pid = spec.part_id(part)
        for i in range(3 * k):
            s = render(spec, 2, i, 112)
            pixels = s.image[s.parts == pid]
            assert len(pixels) > 0
            median = _chroma(np.median(pixels, axis=0))
            nearest = names[int(np.argmin(((refs - median) ** 2).sum(axis=1)))]
            assert nearest == spec.class_colours[s.label][j], (i, part, median)
            assert s.meta[f"{part}_colour"] == nearest


def test_part_map_is_aligned_with_the_image(spec):
    """Pixels deep inside the centre (2 px from its border) have the centre's colour hue."""
    import cv2

    pid = spec.part_id("centre")
    for i in range(2 * spec.num_classes):
        s = render(spec, 4, i, 224)
        inner = cv2.erode((s.parts == pid).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ref = _chroma(spec.class_colour_rgb(s.label)["centre"])
        err = np.abs(_chroma(s.image[inner]) - ref).sum(axis=1)
        assert inner.sum() > 300 and np.mean(err < 0.12) > 0.97
        # and just outside the part map's centre, the petals (or an occluder) are seen: the
        # centre's colour stops at the part-map boundary
        ring = (cv2.dilate(s.mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) & ~s.mask
        ring &= s.parts == spec.part_id("petals")
        petal = _chroma(s.meta["petals_rgb"])
        assert np.median(np.abs(_chroma(s.image[ring]) - petal).sum(axis=1)) < 0.12


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("size", [64, 112, 224])
def test_class_changes_nothing_outside_the_mask(spec, size):
    """Counterfactual: the same sample painted as every class differs only inside the mask.

    This is the exact form of "the class lives only in the masked parts": pixels outside the
    mask, the mask itself, the part map and every sampled nuisance parameter are byte-identical
    whatever the class; inside the mask the pixels differ.
    """
    class_keys = {"label", "class"} | {f"{p}_{x}" for p in spec.discriminative
                                        for x in ("colour", "rgb")}
    for index in range(6):
        samples = [render_as(spec, 3, index, size, label)
                   for label in range(spec.num_classes)]
        ref = samples[0]
        assert _digest(samples[class_of(spec, index)]) == _digest(render(spec, 3, index, size))
        for s in samples[1:]:
            assert np.array_equal(s.parts, ref.parts) and np.array_equal(s.mask, ref.mask)
            assert np.array_equal(s.image[~ref.mask], ref.image[~ref.mask])
            assert not np.array_equal(s.image[ref.mask], ref.image[ref.mask])
            nuisance = {k: v for k, v in s.meta.items() if k not in class_keys}
            assert nuisance == {k: v for k, v in ref.meta.items() if k not in class_keys}


def _petal_spec():
    """A user's variant: 3 classes by petal colour, no clutter part."""
    from an8flower.spec import VariantSpec

    d = load_spec("single-6c").to_dict()
    cols = ["red", "green", "blue"]
    d.update(name="petals-3c", classes=[f"petals-{c}" for c in cols], discriminative=["petals"],
             class_colours={f"petals-{c}": {"petals": c} for c in cols},
             parts=[p for p in d["parts"] if p != "clutter"])
    d["palettes"]["centre"] = d["palettes"].pop("petals")
    del d["palettes"]["clutter"]
    return VariantSpec.from_dict(d)


def test_user_spec_with_other_discriminative_part():
    spec = _petal_spec()
    pid = spec.part_id("petals")
    for index in range(4):
        samples = [render_as(spec, 0, index, 96, label) for label in range(3)]
        ref = samples[0]
        assert np.array_equal(ref.mask, ref.parts == pid) and ref.mask.sum() > 200
        assert "clutter" not in spec.parts and int(ref.parts.max()) < len(spec.parts)
        for s in samples[1:]:
            assert np.array_equal(s.image[~ref.mask], ref.image[~ref.mask])
            assert not np.array_equal(s.image[ref.mask], ref.image[ref.mask])


def _with_visibility(fraction: float, area: float):
    from an8flower.spec import VariantSpec

    d = load_spec("double-12c").to_dict()
    d["nuisance"].update(min_visible_fraction=fraction, min_visible_area=area)
    return VariantSpec.from_dict(d)


def test_visibility_is_enforced_by_redrawing():
    """With 90% of each part required visible, occluded draws are redrawn (attempt > 0).

    The test counts the hard part map: the part's pixels at the end against its pixels right after
    it was drawn (``full``); the accepted attempt passes it, and so does the final part map, whose
    discriminative labels add the anti-aliased fringe to the hard pixels.
    """
    from an8flower import render as r

    spec = _with_visibility(0.9, 0.004)
    attempts = []
    for i in range(40):
        s = render(spec, 0, i, 64)
        attempts.append(s.meta["attempt"])
        d = r._Draws(np.random.default_rng([0, i, s.meta["attempt"]]))
        painter, _, full = r._draw_scene(spec, d, s.label, 64)
        for part in spec.discriminative:
            k = spec.part_id(part)
            assert painter.hard_count(k) >= 0.9 * full[k]
            assert s.meta[f"{part}_visible_px"] >= painter.hard_count(k)
        if s.meta["attempt"] > 0:  # the attempt before was rejected
            d = r._Draws(np.random.default_rng([0, i, s.meta["attempt"] - 1]))
            painter, _, full = r._draw_scene(spec, d, s.label, 64)
            assert any(painter.hard_count(k) < 0.9 * full[k] or painter.hard_count(k) < 0.004 * 64 * 64
                       for k in spec.discriminative_ids)
    assert max(attempts) > 0


def test_impossible_visibility_is_a_spec_error():
    from an8flower.errors import SpecError

    spec = _with_visibility(0.5, 0.2)  # 20% of the image for each part: never met
    with pytest.raises(SpecError, match="min_visible"):
        render(spec, 0, 0, 64)


# ----------------------------------------------------------------------------- the exact guarantee


def _outside_mask_is_label_free(spec, seed, size, indices, labels_of):
    """For each index: the labels ``labels_of(index)`` change no pixel outside the mask, nor the
    mask or part map. Returns the number of images checked."""
    n = 0
    for index in indices:
        ref = render(spec, seed, index, size)
        outside = ~ref.mask
        for b in labels_of(index):
            s = render_as(spec, seed, index, size, b)
            assert np.array_equal(s.mask, ref.mask) and np.array_equal(s.parts, ref.parts), (index, b)
            assert np.array_equal(s.image[outside], ref.image[outside]), (index, b)
            n += 1
    return n


@pytest.mark.parametrize("size, count", [(64, 2000), (112, 500), (224, 200)])
def test_no_pixel_outside_the_mask_depends_on_the_class(spec, size, count):
    """The exact guarantee on thousands of samples: each index painted as two other classes
    (rotating, so every pair of classes occurs) is byte-identical outside the mask. The coverage
    canvases of the previous renderer failed this on 14 of 4,800 double-12c images at 64 px and
    15 of 420 at 224 px (a one-level trace, 1-2 pixels next to the mask)."""
    k = spec.num_classes
    n = _outside_mask_is_label_free(spec, 11, size, range(count),
                                    lambda i: [(i + 1 + i // k) % k, (i + k // 2) % k])
    assert n == 2 * count


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AN8FLOWER_SLOW_TESTS"), reason="the sweep over every label takes "
                    "minutes; set AN8FLOWER_SLOW_TESTS=1")
@pytest.mark.parametrize("size, count", [(64, 4000), (112, 1000), (224, 400), (512, 40)])
def test_no_pixel_outside_the_mask_depends_on_the_class_every_label(spec, size, count):
    """The same sweep, every index painted as every class (about 8 minutes on 2 busy cores)."""
    k = spec.num_classes
    n = _outside_mask_is_label_free(spec, 12, size, range(count), lambda i: range(k))
    assert n == count * k
