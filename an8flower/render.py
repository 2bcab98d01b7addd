"""The an8Flower renderer: a pure function ``(spec, seed, index, size) -> Sample``.

Every sample is drawn from its own random stream, ``numpy.random.default_rng([seed, index,
attempt])``, so any worker, shard or machine renders sample ``index`` identically and nothing reads
or changes global random state. The label is ``index % K`` (:func:`class_of`); it enters the picture
only through the colours of the discriminative parts. Every other attribute (pose, scale, petal
count and shape, leaf placement, nuisance colours, colour jitter, lighting, background, clutter,
occluders) is drawn from the stream by code that never reads the label and that consumes the same
number of draws whatever the label, so those attributes are independent of the class.

Drawing (OpenCV, anti-aliased ``LINE_AA`` fills on uint8 arrays; geometry in fractions of the image
side, fixed-point sub-pixel coordinates), in painter's order:

1. background: ``plain``, ``gradient``, ``noise`` (two octaves of smooth value noise) or
   ``clutter`` (one of the others plus triangles, quadrilaterals, bars and zig-zags: never discs,
   ellipses or leaf shapes, so clutter cannot be mistaken for the centre or a leaf);
2. leaves (lens shapes with a darker midrib) along the stem, 3. the stem (a tapered quadratic
   Bezier band), 4. one or two rings of petals (four outlines) with darker rims, 5. the centre disc
   with a phyllotactic pattern of darker seeds, 6. thin grass-blade occluders in front;
7. a smooth multiplicative lighting field (grey, with a mild per-channel tint), applied per pixel.

**Part map and mask.** The part map gives each pixel the id of the topmost part whose *hard*
(non-anti-aliased) rasterisation covers the pixel centre, *except* that every pixel to whose final
colour a discriminative part contributes anything (its anti-aliased coverage, after all later parts
are composited over it, is > 0) is labelled with that discriminative part (with the largest
contribution where two do). The mask is ``isin(parts, discriminative ids)``. So the anti-aliased
fringe of a discriminative part belongs to the mask, and no pixel outside the mask carries any of a
discriminative part's colour: the class is readable only inside the mask. The renderer tracks
the contribution with one uint8 coverage canvas per discriminative part, drawn with the same
anti-aliased fills as the image (255 for the part, 0 for every part drawn over it).

**Visibility.** Each discriminative part keeps at least ``nuisance.min_visible_fraction`` of its
own area and ``nuisance.min_visible_area`` of the image area visible; a sample that violates this
is redrawn with ``attempt + 1`` (the acceptance depends on geometry only, never on the class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from an8flower.errors import SpecError, UsageError
from an8flower.spec import MAX_SIZE, MIN_SIZE, VariantSpec

__all__ = ["Sample", "class_of", "render", "MAX_ATTEMPTS"]

#: Fractional bits of the fixed-point coordinates passed to OpenCV.
_SHIFT = 4
_ONE = float(1 << _SHIFT)
#: Redraws allowed before a spec is declared unable to keep its discriminative parts visible.
MAX_ATTEMPTS = 64


@dataclass(frozen=True)
class Sample:
    """One rendered sample.

    Attributes:
        image: (H, W, 3) uint8 RGB, anti-aliased.
        label: class index, ``index % spec.num_classes``.
        mask: (H, W) bool, the visible pixels of the discriminative part(s) (see module docstring).
        parts: (H, W) uint8 part ids (positions in ``spec.parts``) aligned with the image.
        meta: the sampled parameters, JSON-serialisable plain values.
    """

    image: np.ndarray
    label: int
    mask: np.ndarray
    parts: np.ndarray
    meta: dict


def class_of(spec: VariantSpec, index: int) -> int:
    """Class of sample ``index``: ``index % spec.num_classes`` (balanced by construction)."""
    return int(index) % spec.num_classes


# ---------------------------------------------------------------------------------------------
# Shape templates (unit size, computed once)


@lru_cache(maxsize=None)
def _circle(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


@lru_cache(maxsize=None)
def _petal_template(shape: str, n: int = 14) -> np.ndarray:
    """Closed outline of a petal of length 1 along +x from the origin, maximal width 1."""
    th = np.linspace(0.0, 1.0, n)
    if shape == "ellipse":
        half = 0.5 * np.sqrt(np.clip(1.0 - (2.0 * th - 1.0) ** 2, 0.0, None))
        x = th
    elif shape == "pointed":
        half = 0.5 * np.sin(math.pi * th) ** 0.85
        x = th
    elif shape == "round":  # narrow at the base, broad round tip (spatulate)
        half = 0.5 * np.sqrt(np.clip(1.0 - ((th - 0.62) / 0.62) ** 2, 0.0, None)) * (
            0.55 + 0.45 * th
        )
        half = half / half.max() * 0.5
        x = th
    elif shape == "notched":  # ellipse with a V notch at the tip
        half = 0.5 * np.sqrt(np.clip(1.0 - (2.0 * th - 1.0) ** 2, 0.0, None))
        x = th
    else:  # pragma: no cover - validated by the spec
        raise SpecError(f"unknown petal shape {shape!r}")
    upper = np.stack([x, half], axis=1)
    lower = np.stack([x[::-1], -half[::-1]], axis=1)[1:-1]
    if shape == "notched":  # replace the tip point by a V notch
        return np.concatenate([upper[:-1], np.array([[0.82, 0.0]]), lower], axis=0)
    pts = np.concatenate([upper, lower], axis=0)
    return pts


@lru_cache(maxsize=None)
def _leaf_template(n: int = 12) -> np.ndarray:
    """Closed lens-shaped leaf of length 1 along +x, maximal width 1, pointed tip, slight asymmetry."""
    th = np.linspace(0.0, 1.0, n)
    half = 0.5 * np.sin(math.pi * th**0.8) ** 0.9
    upper = np.stack([th, half], axis=1)
    lower = np.stack([th[::-1], -0.85 * half[::-1]], axis=1)[1:-1]
    return np.concatenate([upper, lower], axis=0)


# ---------------------------------------------------------------------------------------------
# Random draws


class _Draws:
    """Sequential uniform draws from one generator, fetched in blocks (fast, order-stable)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.buf: list[float] = rng.random(128).tolist()
        self.pos = 0

    def u(self) -> float:
        if self.pos >= len(self.buf):
            self.buf.extend(self.rng.random(128).tolist())
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def vec(self, n: int) -> np.ndarray:
        return np.array([self.u() for _ in range(n)], dtype=np.float64)

    def uniform(self, lo_hi: tuple[float, float]) -> float:
        lo, hi = lo_hi
        return lo + (hi - lo) * self.u()

    def integer(self, lo_hi: tuple[int, int]) -> int:
        lo, hi = lo_hi
        return min(hi, lo + int(self.u() * (hi - lo + 1)))

    def choice(self, weighted: tuple[tuple[str, float], ...]) -> str:
        total = sum(w for _, w in weighted)
        r = self.u() * total
        acc = 0.0
        for name, w in weighted:
            acc += w
            if r < acc:
                return name
        return weighted[-1][0]

    def jitter(self, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(int(min(255, max(0, c + round((2.0 * self.u() - 1.0) * amount)))) for c in rgb)


# ---------------------------------------------------------------------------------------------
# Painter: image, part map and discriminative coverage canvases drawn in lockstep


class _Painter:
    def __init__(self, size: int, disc_ids: tuple[int, ...]) -> None:
        self.size = size
        self.image = np.empty((size, size, 3), np.uint8)
        self.parts = np.zeros((size, size), np.uint8)
        self.disc_ids = disc_ids
        self.cover: dict[int, np.ndarray] = {}

    def _fix(self, polys: list[np.ndarray]) -> list[np.ndarray]:
        s = self.size * _ONE
        return [np.rint(p * s).astype(np.int32) for p in polys]

    def fill(self, polys: list[np.ndarray], colour: tuple[int, int, int], pid: int) -> None:
        """Fill polygons (unit coordinates; disjoint if more than one) with colour, part ``pid``."""
        pts = self._fix(polys)
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.parts, pts, pid, cv2.LINE_8, _SHIFT)
        if pid in self.disc_ids and pid not in self.cover:
            self.cover[pid] = np.zeros((self.size, self.size), np.uint8)
        for k, canvas in self.cover.items():
            cv2.fillPoly(canvas, pts, 255 if k == pid else 0, cv2.LINE_AA, _SHIFT)

    def outline(self, polys: list[np.ndarray], colour: tuple[int, int, int], pid: int,
                closed: bool = True) -> None:
        """Draw 1-px anti-aliased outlines of polygons as part ``pid``."""
        pts = self._fix(polys)
        cv2.polylines(self.image, pts, closed, colour, 1, cv2.LINE_AA, _SHIFT)
        cv2.polylines(self.parts, pts, closed, pid, 1, cv2.LINE_8, _SHIFT)
        if pid in self.disc_ids and pid not in self.cover:
            self.cover[pid] = np.zeros((self.size, self.size), np.uint8)
        for k, canvas in self.cover.items():
            cv2.polylines(canvas, pts, closed, 255 if k == pid else 0, 1, cv2.LINE_AA, _SHIFT)

    def area(self, pid: int) -> int:
        canvas = self.cover.get(pid)
        return 0 if canvas is None else int(cv2.countNonZero(canvas))

    def finish_parts(self) -> None:
        """Label every pixel a discriminative part contributes to with that part (see docstring)."""
        if not self.cover:
            return
        ids = list(self.cover)
        if len(ids) == 1:
            self.parts[self.cover[ids[0]] > 0] = ids[0]
            return
        stack = np.stack([self.cover[k] for k in ids])
        best = stack.argmax(axis=0)
        touched = stack.max(axis=0) > 0
        self.parts[touched] = np.asarray(ids, np.uint8)[best[touched]]


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * f)))) for c in rgb)


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, s], [-s, c]])  # row-vector convention: p @ R


# ---------------------------------------------------------------------------------------------
# Scene


def _background(p: _Painter, d: _Draws, spec: VariantSpec, kind: str, meta: dict) -> None:
    nz = spec.nuisance
    pal = spec.palette("background")
    jit = nz.nuisance_jitter
    c1n, c2n = d.choice(pal), d.choice(pal)
    c1 = np.array(d.jitter(spec.rgb(c1n), d.integer(jit)), np.float32)
    c2 = np.array(d.jitter(spec.rgb(c2n), d.integer(jit)), np.float32)
    size = p.size
    if kind == "plain":
        p.image[:] = c1.astype(np.uint8)
        meta["background_colours"] = [c1n]
        return
    if kind == "gradient":
        ang = 2.0 * math.pi * d.u()
        g = 6
        xy = (np.arange(g, dtype=np.float32) + 0.5) / g - 0.5
        t = (math.cos(ang) * xy[None, :] + math.sin(ang) * xy[:, None]) / 0.71 * 0.5 + 0.5
    else:  # noise
        g1 = 3 + int(d.u() * 6)
        g2 = 24
        t1 = np.array(d.vec(g1 * g1), np.float32).reshape(g1, g1)
        t2 = np.array(d.vec(g2 * g2), np.float32).reshape(g2, g2)
        t = 0.75 * cv2.resize(t1, (g2, g2), interpolation=cv2.INTER_CUBIC) + 0.25 * t2
        g = g2
    low = (c1[None, None, :] + np.clip(t, 0.0, 1.0)[:, :, None] * (c2 - c1)[None, None, :])
    low = np.clip(low + 0.5, 0, 255).astype(np.uint8)
    cv2.resize(low, (size, size), dst=p.image, interpolation=cv2.INTER_LINEAR)
    meta["background_colours"] = [c1n, c2n]


def _clutter_polys(d: _Draws) -> np.ndarray:
    """One clutter shape (unit coordinates): triangle, quadrilateral, bar or zig-zag band."""
    kind = int(d.u() * 4)
    cx, cy = d.u(), d.u()
    r = 0.05 + 0.1 * d.u()
    ang = 2.0 * math.pi * d.u()
    if kind == 0:  # triangle
        a = ang + np.array([0.0, 2.1 + 0.4 * d.u(), 4.2 + 0.4 * d.u()])
        pts = np.stack([np.cos(a), np.sin(a)], axis=1) * r
    elif kind == 1:  # quadrilateral
        w, h = r, r * (0.5 + 0.5 * d.u())
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ _rot(ang)
    elif kind == 2:  # bar
        w, h = 1.6 * r, 0.12 * r + 0.01
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ _rot(ang)
    else:  # zig-zag band
        n = 5
        xs = np.linspace(-1.5 * r, 1.5 * r, n)
        ys = np.where(np.arange(n) % 2 == 0, -0.4 * r, 0.4 * r)
        h = 0.012 + 0.02 * d.u()
        top = np.stack([xs, ys - h], axis=1)
        bot = np.stack([xs[::-1], ys[::-1] + h], axis=1)
        pts = np.concatenate([top, bot]) @ _rot(ang)
    return pts + np.array([cx, cy])


def _stem_polygon(start: np.ndarray, ctrl: np.ndarray, end: np.ndarray,
                  w0: float, w1: float, n: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Band of half-width w0..w1 around a quadratic Bezier curve; returns (polygon, centreline)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    line = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
    tang = 2 * (1 - t) * (ctrl - start) + 2 * t * (end - ctrl)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    half = (w0 + (w1 - w0) * t)
    left = line + normal * half
    right = line - normal * half
    return np.concatenate([left, right[::-1]]), line


def _blade(d: _Draws) -> np.ndarray:
    """A grass blade rising from the bottom edge (a thin tapered curved polygon)."""
    x0 = d.u()
    top = np.array([x0 + (d.u() - 0.5) * 0.5, 0.1 + 0.5 * d.u()])
    start = np.array([x0, 1.05])
    ctrl = (start + top) / 2 + np.array([(d.u() - 0.5) * 0.2, 0.0])
    w = 0.006 + 0.008 * d.u()
    poly, _ = _stem_polygon(start, ctrl, top, w, 0.0015, n=10)
    return poly


def _draw_scene(spec: VariantSpec, d: _Draws, label: int, size: int) -> tuple[_Painter, dict]:
    nz = spec.nuisance
    pid = {name: i for i, name in enumerate(spec.parts)}
    disc = set(spec.discriminative)
    p = _Painter(size, spec.discriminative_ids)
    meta: dict = {}

    # Colours: every draw happens whatever the label; the label only picks the class colours.
    class_rgb = spec.class_colour_rgb(label)
    colour: dict[str, tuple[int, int, int]] = {}
    colour_name: dict[str, str] = {}
    for part in ("stem", "leaves", "petals", "centre"):
        jit_amount = d.integer(nz.class_jitter if part in disc else nz.nuisance_jitter)
        if part in disc:
            d.u()  # the palette draw a nuisance part would make: keeps the stream label-free
            colour_name[part] = spec.class_colours[label][spec.discriminative.index(part)]
            base = class_rgb[part]
        else:
            colour_name[part] = d.choice(spec.palette(part))
            base = spec.rgb(colour_name[part])
        colour[part] = d.jitter(base, jit_amount)
    for part in ("stem", "leaves", "petals", "centre"):
        meta[f"{part}_colour"] = colour_name[part]
        meta[f"{part}_rgb"] = list(colour[part])

    # 1. background (+ clutter)
    kind = d.choice(nz.backgrounds)
    base_kind = kind if kind != "clutter" else ("plain", "gradient", "noise")[int(d.u() * 3)]
    meta["background"] = kind
    meta["background_base"] = base_kind
    _background(p, d, spec, base_kind, meta)
    n_clutter = d.integer(nz.clutter_count) if kind == "clutter" else 0
    has_clutter = "clutter" in pid
    clutter_pal = spec.palette("clutter") if has_clutter else spec.palette("background")
    clutter_id = pid.get("clutter", 0)
    for _ in range(n_clutter):
        c = d.jitter(spec.rgb(d.choice(clutter_pal)), nz.nuisance_jitter[1])
        p.fill([_clutter_polys(d)], c, clutter_id)
    meta["clutter_count"] = n_clutter

    # flower geometry
    s = d.uniform(nz.scale)
    head = np.array([d.uniform(nz.head_x), d.uniform(nz.head_y)])
    rc = d.uniform(nz.centre_radius) * s
    meta.update(head_x=round(float(head[0]), 6), head_y=round(float(head[1]), 6),
                scale=round(s, 6), centre_radius=round(rc, 6))

    # 2. stem
    end = np.array([head[0] + (d.u() - 0.5) * 0.2, 1.06])
    curv = d.uniform(nz.stem_curvature)
    mid = (head + end) / 2
    ctrl = mid + np.array([curv, 0.0])
    sw = d.uniform(nz.stem_width) * s / 2
    stem_poly, stem_line = _stem_polygon(head, ctrl, end, 0.75 * sw, sw)
    meta["stem_curvature"] = round(curv, 6)

    # 3. leaves (drawn before the stem, which covers their bases)
    n_leaves = d.integer(nz.leaf_count)
    side = 1.0 if d.u() < 0.5 else -1.0
    lo, hi = nz.leaf_position
    leaf_polys, ribs = [], []
    slots = np.sort(np.array([lo + (hi - lo) * (i + d.u()) / max(n_leaves, 1)
                              for i in range(n_leaves)]))
    for i in range(n_leaves):
        t = slots[i]
        k = t * (len(stem_line) - 1)
        j = min(int(k), len(stem_line) - 2)
        base = stem_line[j] + (stem_line[j + 1] - stem_line[j]) * (k - j)
        length = d.uniform(nz.leaf_length) * s
        width = d.uniform(nz.leaf_width)
        ang = math.radians(d.uniform(nz.leaf_angle_deg))
        direction = math.atan2(-math.sin(ang), side * math.cos(ang))
        tmpl = _leaf_template() * np.array([length, length * width])
        rot = _rot(-direction)
        leaf_polys.append(tmpl @ rot + base)
        ribs.append(np.array([[0.05 * length, 0.0], [0.85 * length, 0.0]]) @ rot + base)
        side = -side
    leaf_rgb = colour["leaves"]
    rib_rgb = _shade(leaf_rgb, 0.72)
    for poly, rib in zip(leaf_polys, ribs):
        p.fill([poly], leaf_rgb, pid["leaves"])
        p.outline([rib], rib_rgb, pid["leaves"], closed=False)
    meta["leaf_count"] = n_leaves
    leaves_full = p.area(pid["leaves"])

    p.fill([stem_poly], colour["stem"], pid["stem"])

    # 4. petals
    n_pet = d.integer(nz.petal_count)
    layers = d.integer(nz.petal_layers)
    shape = d.choice(nz.petal_shapes)
    plen = d.uniform(nz.petal_length) * s
    pwid = d.uniform(nz.petal_width)
    rot0 = math.radians(d.uniform(nz.rotation_deg))
    tmpl = _petal_template(shape)
    petal_rgb = colour["petals"]
    for layer in range(layers):
        f_len = 1.0 if layer == 0 else 0.62
        offset = 0.0 if layer == 0 else math.pi / n_pet
        shade0 = 1.0 if layer == 0 else 0.86
        for i in range(n_pet):
            a = rot0 + offset + 2.0 * math.pi * i / n_pet + (d.u() - 0.5) * 0.5 * math.pi / n_pet
            ln = plen * f_len * (0.9 + 0.2 * d.u())
            pts = tmpl * np.array([ln, ln * pwid]) + np.array([0.35 * rc, 0.0])
            poly = pts @ _rot(-a) + head
            c = _shade(petal_rgb, shade0 * (0.9 + 0.12 * d.u()))
            p.fill([poly], c, pid["petals"])
            p.outline([poly], _shade(c, 0.78), pid["petals"])
    meta.update(petal_count=n_pet, petal_layers=layers, petal_shape=shape,
                petal_length=round(plen, 6), petal_width=round(pwid, 6),
                rotation_deg=round(math.degrees(rot0), 6))

    # 5. centre disc with phyllotactic seeds
    centre_rgb = colour["centre"]
    p.fill([_circle() * rc + head], centre_rgb, pid["centre"])
    n_seeds = 13
    k = np.arange(1, n_seeds + 1)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    rr = 0.72 * rc * np.sqrt(k / n_seeds)
    th = k * golden + rot0
    seed_r = 0.09 * rc
    seeds = [_circle(12) * seed_r + head + np.array([x, y])
             for x, y in zip(rr * np.cos(th), rr * np.sin(th))]
    p.fill(seeds, _shade(centre_rgb, 0.72), pid["centre"])
    p.outline([_circle() * rc + head], _shade(centre_rgb, 0.8), pid["centre"])
    centre_full = p.area(pid["centre"])

    # 6. occluders in front
    n_occ = d.integer(nz.occluder_count)
    for _ in range(n_occ):
        c = d.jitter(spec.rgb(d.choice(clutter_pal)), nz.nuisance_jitter[1])
        p.fill([_blade(d)], c, clutter_id)
    meta["occluder_count"] = n_occ

    # 7. lighting: smooth grey field with a mild per-channel tint, 128 = 1.0
    amp = d.uniform(nz.illumination)
    tint = d.uniform(nz.tint)
    g = 3
    field = 1.0 + amp * (2.0 * d.vec(g * g) - 1.0)
    chan = 1.0 + tint * (2.0 * d.vec(3) - 1.0)
    low = np.clip(np.rint(128.0 * field.reshape(g, g, 1) * chan.reshape(1, 1, 3)), 0, 255)
    light = cv2.resize(low.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    cv2.multiply(p.image, light, dst=p.image, scale=1.0 / 128.0)
    meta.update(illumination=round(amp, 6), tint=round(tint, 6))

    meta["_full_area"] = {pid["centre"]: centre_full, pid["leaves"]: leaves_full}
    return p, meta


def render(spec: VariantSpec, seed: int, index: int, size: int | None = None) -> Sample:
    """Render sample ``index`` of the dataset ``(spec, seed)``: a pure function of its arguments.

    Args:
        spec: the variant.
        seed: the dataset's global seed (>= 0).
        index: sample index (>= 0); the label is ``index % spec.num_classes``.
        size: image side in pixels (64..512); default ``spec.size``.

    Returns:
        :class:`Sample` with image, label, mask, part map and the sampled parameters.

    Raises:
        UsageError: a size outside 64..512 or a negative seed or index.
        SpecError: the spec's visibility constraint could not be met in ``MAX_ATTEMPTS`` draws.
    """
    if size is None:
        size = spec.size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (
        MIN_SIZE <= int(size) <= MAX_SIZE
    ):
        raise UsageError(f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    for name, v in (("seed", seed), ("index", index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise UsageError(f"{name} must be a non-negative integer, got {v!r}")
    size, seed, index = int(size), int(seed), int(index)
    label = class_of(spec, index)
    nz = spec.nuisance
    min_px = nz.min_visible_area * size * size
    for attempt in range(MAX_ATTEMPTS):
        d = _Draws(np.random.default_rng([seed, index, attempt]))
        painter, meta = _draw_scene(spec, d, label, size)
        full = meta.pop("_full_area")
        painter.finish_parts()
        visible = {}
        ok = True
        for part, k in zip(spec.discriminative, spec.discriminative_ids):
            vis = int(np.count_nonzero(painter.parts == k))
            visible[part] = vis
            if vis < min_px or vis < nz.min_visible_fraction * full[k]:
                ok = False
        if ok:
            break
    else:
        raise SpecError(
            f"spec {spec.name!r}: discriminative parts not visible enough in {MAX_ATTEMPTS} draws "
            f"(sample {index}); relax nuisance.min_visible_fraction / min_visible_area"
        )
    mask = np.isin(painter.parts, np.asarray(spec.discriminative_ids, np.uint8))
    meta = {"index": index, "seed": seed, "size": size, "label": label,
            "class": spec.classes[label], "attempt": attempt,
            **meta, **{f"{part}_visible_px": v for part, v in visible.items()}}
    return Sample(image=painter.image, label=label, mask=mask, parts=painter.parts, meta=meta)
