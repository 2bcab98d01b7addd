"""The an8Flower renderer: a pure function ``(spec, seed, index, size) -> Sample``.

Every sample is drawn from its own random stream, ``numpy.random.default_rng([seed, index,
attempt])``, so any worker, shard or machine renders sample ``index`` identically and nothing reads
or changes global random state. The label is ``index % K`` (:func:`class_of`); it enters the picture
only through the colours of the discriminative parts. Every other attribute (pose, scale, petal
count and shape, leaf placement, nuisance colours, colour jitter, lighting, background, clutter,
occluders) is drawn from the stream by code that never reads the label and that consumes the same
number of draws whatever the label, so those attributes are independent of the class: painting
sample ``index`` as another class changes only the pixels inside its mask.

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
    out = np.stack([np.cos(t), np.sin(t)], axis=1)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=None)
def _seeds(n: int = 13) -> np.ndarray:
    """(n, 12, 2) small discs in a sunflower (golden-angle) pattern inside the unit disc."""
    k = np.arange(1, n + 1)
    r = 0.72 * np.sqrt(k / n)
    th = k * math.pi * (3.0 - math.sqrt(5.0))
    centres = np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
    out = _circle(12)[None] * 0.09 + centres[:, None, :]
    out.setflags(write=False)
    return out


@lru_cache(maxsize=None)
def _petal_template(shape: str, n: int = 14) -> np.ndarray:
    """Closed outline of a petal of length 1 along +x from the origin, maximal width 1."""
    th = np.linspace(0.0, 1.0, n)
    if shape in ("ellipse", "notched"):  # notched: an ellipse whose tip is cut by a V below
        half = 0.5 * np.sqrt(np.clip(1.0 - (2.0 * th - 1.0) ** 2, 0.0, None))
    elif shape == "pointed":
        half = 0.5 * np.sin(math.pi * th) ** 0.85
    elif shape == "round":  # narrow base widening linearly, semicircular tip (spatulate)
        half = np.where(th < 0.6, 0.5 * (0.35 + 0.65 * th / 0.6),
                        0.5 * np.sqrt(np.clip(1.0 - ((th - 0.6) / 0.4) ** 2, 0.0, None)))
    else:  # pragma: no cover - validated by the spec
        raise SpecError(f"unknown petal shape {shape!r}")
    upper = np.stack([th, half], axis=1)
    lower = np.stack([th[::-1], -half[::-1]], axis=1)[1:-1]
    if shape == "notched":  # replace the tip point by a V notch
        pts = np.concatenate([upper[:-1], np.array([[0.82, 0.0]]), lower], axis=0)
    else:
        pts = np.concatenate([upper, lower], axis=0)
    pts.setflags(write=False)
    return pts


@lru_cache(maxsize=None)
def _leaf_template(n: int = 12) -> np.ndarray:
    """Closed lens-shaped leaf of length 1 along +x, maximal width 1, pointed, slightly lopsided."""
    th = np.linspace(0.0, 1.0, n)
    half = 0.5 * np.sin(math.pi * th**0.8) ** 0.9
    upper = np.stack([th, half], axis=1)
    lower = np.stack([th[::-1], -0.85 * half[::-1]], axis=1)[1:-1]
    out = np.concatenate([upper, lower], axis=0)
    out.setflags(write=False)
    return out


# ---------------------------------------------------------------------------------------------
# Random draws


class _Draws:
    """Sequential uniform [0, 1) draws from one generator, fetched in blocks (fast, order-stable).

    The k-th value handed out is the k-th value of ``rng.random`` whatever mix of :meth:`u` and
    :meth:`vec` calls consumed it, so the stream is a pure function of the generator's seed.
    """

    _BLOCK = 256

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.arr = rng.random(self._BLOCK)
        self.buf: list[float] = self.arr.tolist()
        self.pos = 0

    def _ensure(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            fresh = self.rng.random(max(self._BLOCK, n))
            self.arr = np.concatenate([self.arr[self.pos :], fresh])
            self.buf = self.arr.tolist()
            self.pos = 0

    def u(self) -> float:
        if self.pos >= len(self.buf):
            self._ensure(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def vec(self, n: int) -> np.ndarray:
        self._ensure(n)
        v = self.arr[self.pos : self.pos + n]
        self.pos += n
        return v

    def uniform(self, lo_hi: tuple[float, float]) -> float:
        lo, hi = lo_hi
        return lo + (hi - lo) * self.u()

    def integer(self, lo_hi: tuple[int, int]) -> int:
        lo, hi = lo_hi
        return min(hi, lo + int(self.u() * (hi - lo + 1)))

    def choice(self, weighted: tuple[tuple[str, float], ...]) -> str:
        r = self.u() * sum(w for _, w in weighted)
        acc = 0.0
        for name, w in weighted:
            acc += w
            if r < acc:
                return name
        return weighted[-1][0]

    def jitter(self, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        """``rgb`` plus independent uniform integer offsets in [-amount, amount] per channel."""
        r, g, b = self.u(), self.u(), self.u()
        a = 2.0 * amount
        return (
            _clip8(rgb[0] + round((r - 0.5) * a)),
            _clip8(rgb[1] + round((g - 0.5) * a)),
            _clip8(rgb[2] + round((b - 0.5) * a)),
        )


def _clip8(v: float) -> int:
    return 0 if v < 0 else 255 if v > 255 else int(v)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """``rgb`` scaled by ``f >= 0``, rounded half up, clipped to 0..255."""
    return (min(255, int(rgb[0] * f + 0.5)), min(255, int(rgb[1] * f + 0.5)),
            min(255, int(rgb[2] * f + 0.5)))


def _rot(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians, counter-clockwise on screen) for row vectors: ``p @ R``."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


# ---------------------------------------------------------------------------------------------
# Painter: image, part map and discriminative coverage canvases drawn in lockstep


class _Painter:
    """Draws every shape three ways at once.

    * ``image``: anti-aliased colour fill;
    * ``parts``: hard (``LINE_8``) fill with the part id (painter's order);
    * ``cover[k]`` (one per discriminative part ``k`` drawn so far): anti-aliased fill with 255 for
      part ``k`` and 0 for every other part, so after compositing ``cover[k] > 0`` exactly where
      part ``k`` still contributes to the pixel's colour. A shape is not drawn on a coverage canvas
      whose part lies outside the shape's bounding box (nothing there to erase).
    """

    def __init__(self, size: int, disc_ids: tuple[int, ...]) -> None:
        self.size = size
        self.scale = size * _ONE
        self.image = np.empty((size, size, 3), np.uint8)
        self.parts = np.zeros((size, size), np.uint8)
        self.disc_ids = disc_ids
        #: Outline width in pixels: about 1/256 of the side (at least 1 px).
        self.line = max(1, round(size / 256))
        self.cover: dict[int, np.ndarray] = {}
        self.box: dict[int, list[int]] = {}

    def fix(self, pts: np.ndarray) -> np.ndarray:
        """Unit coordinates (..., 2) -> int32 fixed-point pixel coordinates."""
        return np.rint(pts * self.scale).astype(np.int32)

    def _cover(self, pts: list[np.ndarray], pid: int, draw) -> None:
        if pid in self.disc_ids and pid not in self.cover:
            self.cover[pid] = np.zeros((self.size, self.size), np.uint8)
            self.box[pid] = [1 << 30, 1 << 30, -(1 << 30), -(1 << 30)]
        if not self.cover:
            return
        x, y, w, h = cv2.boundingRect(pts[0] if len(pts) == 1 else np.concatenate(pts))
        margin = (2 + self.line) << _SHIFT  # anti-aliasing and line width reach beyond
        x0, y0, x1, y1 = x - margin, y - margin, x + w + margin, y + h + margin
        for k, canvas in self.cover.items():
            b = self.box[k]
            if k == pid:
                draw(canvas, 255)
                b[0], b[1] = min(b[0], x0), min(b[1], y0)
                b[2], b[3] = max(b[2], x1), max(b[3], y1)
            elif x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1:
                draw(canvas, 0)

    def fill(self, pts: list[np.ndarray], colour: tuple[int, int, int], pid: int) -> None:
        """Fill polygons (fixed point; disjoint if several) with ``colour`` as part ``pid``."""
        cv2.fillPoly(self.image, pts, colour, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.parts, pts, pid, cv2.LINE_8, _SHIFT)
        self._cover(pts, pid, lambda c, v: cv2.fillPoly(c, pts, v, cv2.LINE_AA, _SHIFT))

    def outline(self, pts: list[np.ndarray], colour: tuple[int, int, int], pid: int,
                closed: bool = True) -> None:
        """Draw anti-aliased outlines (fixed-point polylines, ``self.line`` px) as part ``pid``."""
        t = self.line
        cv2.polylines(self.image, pts, closed, colour, t, cv2.LINE_AA, _SHIFT)
        cv2.polylines(self.parts, pts, closed, pid, t, cv2.LINE_8, _SHIFT)
        self._cover(pts, pid,
                    lambda c, v: cv2.polylines(c, pts, closed, v, t, cv2.LINE_AA, _SHIFT))

    def seal(self, pid: int) -> int:
        """Once part ``pid`` is drawn, mark every pixel it touched as fully its own (255).

        Later anti-aliased fills scale a coverage value ``w`` by ``1 - alpha`` and round; starting
        from 255 rather than a small fringe value keeps ``w > 0`` wherever the part still shows.

        Returns:
            The number of pixels the part touched (0 for a non-discriminative part).
        """
        canvas = self.cover.get(pid)
        if canvas is None:
            return 0
        cv2.threshold(canvas, 0, 255, cv2.THRESH_BINARY, dst=canvas)
        return int(cv2.countNonZero(canvas))

    def finish_parts(self) -> None:
        """Label every pixel a discriminative part contributes to with that part.

        Where two discriminative parts contribute, the larger contribution wins (ties: the part
        listed first in the spec).
        """
        best = None
        for k in self.disc_ids:
            w = self.cover.get(k)
            if w is None:
                continue
            if best is None:
                np.copyto(self.parts, k, where=w > 0)
                best = w
            else:
                np.copyto(self.parts, k, where=w > best)
                best = np.maximum(best, w)


# ---------------------------------------------------------------------------------------------
# Scene


def _background(p: _Painter, d: _Draws, spec: VariantSpec, kind: str, meta: dict) -> None:
    """Paint ``plain``, ``gradient`` or two-octave value-``noise`` background into ``p.image``."""
    nz = spec.nuisance
    pal = spec.palette("background")
    c1n, c2n = d.choice(pal), d.choice(pal)
    c1 = np.array(d.jitter(spec.rgb(c1n), d.integer(nz.nuisance_jitter)), np.float32)
    c2 = np.array(d.jitter(spec.rgb(c2n), d.integer(nz.nuisance_jitter)), np.float32)
    if kind == "plain":
        p.image[:] = c1.astype(np.uint8)
        meta["background_colours"] = [c1n]
        return
    if kind == "gradient":
        ang = 2.0 * math.pi * d.u()
        g = 8  # the linear ramp sampled at the cell centres of a g x g grid, then upsampled
        xy = (np.arange(g, dtype=np.float32) + 0.5) / g - 0.5
        t = (math.cos(ang) * xy[None, :] + math.sin(ang) * xy[:, None]) * 1.41 + 0.5
    else:  # noise: a coarse octave (3..8 cells) and a fine one (24 cells)
        g1, g = 3 + int(d.u() * 6), 24
        t1 = d.vec(g1 * g1).astype(np.float32).reshape(g1, g1)
        t2 = d.vec(g * g).astype(np.float32).reshape(g, g)
        t2 = cv2.GaussianBlur(t2, (3, 3), 0.8, borderType=cv2.BORDER_REFLECT)
        t = 0.7 * cv2.resize(t1, (g, g), interpolation=cv2.INTER_CUBIC) + 0.3 * t2
    low = c1 + np.clip(t, 0.0, 1.0)[:, :, None] * (c2 - c1)
    low = np.clip(low + 0.5, 0, 255).astype(np.uint8)
    cv2.resize(low, (p.size, p.size), dst=p.image, interpolation=cv2.INTER_CUBIC)
    meta["background_colours"] = [c1n, c2n]


def _clutter_shape(d: _Draws) -> np.ndarray:
    """One clutter shape (unit coordinates): triangle, quadrilateral, bar or zig-zag band.

    Only straight-edged shapes: never a disc, an ellipse or a leaf-like lens, so clutter cannot be
    taken for a flower centre or a leaf.
    """
    kind = int(d.u() * 4)
    cx, cy, r, ang = d.u(), d.u(), 0.04 + 0.09 * d.u(), 2.0 * math.pi * d.u()
    if kind == 0:  # triangle
        a = ang + np.array([0.0, 2.0 + 0.5 * d.u(), 4.1 + 0.5 * d.u()])
        pts = np.stack([np.cos(a), np.sin(a)], axis=1) * r
    elif kind in (1, 2):  # quadrilateral, bar
        w, h = (r, r * (0.4 + 0.6 * d.u())) if kind == 1 else (1.7 * r, 0.1 * r + 0.008)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ _rot(ang)
    else:  # zig-zag band
        xs = np.linspace(-1.5 * r, 1.5 * r, 5)
        ys = np.array([-0.4, 0.4, -0.4, 0.4, -0.4]) * r
        h = 0.01 + 0.015 * d.u()
        pts = np.concatenate([np.stack([xs, ys - h], axis=1),
                              np.stack([xs[::-1], ys[::-1] + h], axis=1)]) @ _rot(ang)
    return pts + np.array([cx, cy])


@lru_cache(maxsize=None)
def _unit_steps(n: int) -> np.ndarray:
    out = np.linspace(0.0, 1.0, n)[:, None]
    out.setflags(write=False)
    return out


def _band(start: np.ndarray, ctrl: np.ndarray, end: np.ndarray, w0: float, w1: float,
          n: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Band of half-width w0 -> w1 around a quadratic Bezier curve: (polygon, centreline)."""
    t = _unit_steps(n)
    line = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
    tang = 2 * (1 - t) * (ctrl - start) + 2 * t * (end - ctrl)
    tang /= np.sqrt((tang**2).sum(axis=1, keepdims=True))
    normal = np.concatenate([-tang[:, 1:], tang[:, :1]], axis=1) * (w0 + (w1 - w0) * t)
    return np.concatenate([line + normal, (line - normal)[::-1]]), line


def _blade(d: _Draws) -> np.ndarray:
    """A grass blade rising from the bottom edge: a thin, tapered, curved polygon."""
    x0 = d.u()
    top = np.array([x0 + (d.u() - 0.5) * 0.5, 0.1 + 0.5 * d.u()])
    start = np.array([x0, 1.05])
    ctrl = (start + top) / 2 + np.array([(d.u() - 0.5) * 0.2, 0.0])
    poly, _ = _band(start, ctrl, top, 0.005 + 0.007 * d.u(), 0.0015, n=10)
    return poly


def _draw_scene(spec: VariantSpec, d: _Draws, label: int,
                size: int) -> tuple[_Painter, dict, dict[int, int]]:
    """Draw one scene; ``label`` is read only to pick the discriminative parts' colours.

    Returns:
        The painter (image, part map, coverage canvases), the sampled parameters and, for each
        discriminative part id, the pixels it covered when drawn (before later parts hid any).
    """
    nz = spec.nuisance
    pid = {name: i for i, name in enumerate(spec.parts)}
    disc = spec.discriminative
    p = _Painter(size, spec.discriminative_ids)
    meta: dict = {}

    # Colours. Every draw is made whatever the label; the label only picks the class colours.
    colour: dict[str, tuple[int, int, int]] = {}
    for part in ("stem", "leaves", "petals", "centre"):
        amount = d.integer(nz.class_jitter if part in disc else nz.nuisance_jitter)
        if part in disc:
            d.u()  # stands for the palette draw of a nuisance part: same stream for every label
            name = spec.class_colours[label][disc.index(part)]
        else:
            name = d.choice(spec.palette(part))
        colour[part] = d.jitter(spec.rgb(name), amount)
        meta[f"{part}_colour"] = name
        meta[f"{part}_rgb"] = list(colour[part])

    # 1. background, and clutter behind the flower
    kind = d.choice(nz.backgrounds)
    base_kind = kind if kind != "clutter" else ("plain", "gradient", "noise")[int(d.u() * 3)]
    meta["background"] = kind
    meta["background_base"] = base_kind
    _background(p, d, spec, base_kind, meta)
    clutter_id = pid.get("clutter", 0)
    clutter_pal = spec.palette("clutter" if "clutter" in pid else "background")
    n_clutter = d.integer(nz.clutter_count) if kind == "clutter" else 0
    for _ in range(n_clutter):
        c = d.jitter(spec.rgb(d.choice(clutter_pal)), nz.nuisance_jitter[1])
        p.fill([p.fix(_clutter_shape(d))], c, clutter_id)
    meta["clutter_count"] = n_clutter

    # Flower pose: head position, size, foreshortening of the head along a random axis.
    s = d.uniform(nz.scale)
    head = np.array([d.uniform(nz.head_x), d.uniform(nz.head_y)])
    squash = d.uniform(nz.head_squash)
    axis = math.pi * d.u()
    head_m = _rot(-axis) @ np.diag([1.0, squash]) @ _rot(axis)  # row vectors: p @ head_m
    rc = d.uniform(nz.centre_radius) * s
    meta.update(head_x=round(float(head[0]), 6), head_y=round(float(head[1]), 6),
                scale=round(s, 6), head_squash=round(squash, 6),
                head_axis_deg=round(math.degrees(axis), 6), centre_radius=round(rc, 6))

    # 2. stem: a tapered quadratic Bezier band from the head to below the bottom edge
    end = np.array([head[0] + (d.u() - 0.5) * 0.24, 1.06])
    curv = d.uniform(nz.stem_curvature)
    ctrl = (head + end) / 2 + np.array([curv, 0.0])
    sw = d.uniform(nz.stem_width) * s / 2
    stem_poly, stem_line = _band(head, ctrl, end, 0.7 * sw, sw)
    meta["stem_curvature"] = round(curv, 6)

    # 3. leaves along the stem, alternating sides (drawn first: the stem covers their bases)
    n_leaves = d.integer(nz.leaf_count)
    side = 1.0 if d.u() < 0.5 else -1.0
    lo, hi = nz.leaf_position
    leaf_rgb = colour["leaves"]
    rib_rgb = _shade(leaf_rgb, 0.7)
    tmpl = _leaf_template()
    for i in range(n_leaves):
        t = lo + (hi - lo) * (i + d.u()) / n_leaves
        k = t * (len(stem_line) - 1)
        j = min(int(k), len(stem_line) - 2)
        base = stem_line[j] + (stem_line[j + 1] - stem_line[j]) * (k - j)
        length = d.uniform(nz.leaf_length) * s
        width = d.uniform(nz.leaf_width)
        bend = d.uniform(nz.leaf_bend)
        up = math.radians(d.uniform(nz.leaf_angle_deg))
        shape = tmpl * np.array([1.0, width])
        shape[:, 1] += bend * shape[:, 0] ** 2  # bend the midrib
        rib = np.stack([np.linspace(0.05, 0.85, 6), np.zeros(6)], axis=1)
        rib[:, 1] = bend * rib[:, 0] ** 2
        # local x along the leaf (pointing `up` above the horizontal, towards `side`), local y
        # mirrored with the side; screen y grows downwards
        cu, su = math.cos(up), math.sin(up)
        frame = np.array([[side * cu, -su], [side * su, cu]]) * length
        leaf = shape @ frame + base
        rib = rib @ frame + base
        p.fill([p.fix(leaf)], leaf_rgb, pid["leaves"])
        p.outline([p.fix(rib)], rib_rgb, pid["leaves"], closed=False)
        side = -side
    meta["leaf_count"] = n_leaves
    full = {pid["leaves"]: p.seal(pid["leaves"])}

    p.fill([p.fix(stem_poly)], colour["stem"], pid["stem"])
    full[pid["stem"]] = p.seal(pid["stem"])

    # 4. petals: one or two rings, drawn one by one (they overlap), each with a darker rim
    n_pet = d.integer(nz.petal_count)
    layers = d.integer(nz.petal_layers)
    shape = d.choice(nz.petal_shapes)
    plen = d.uniform(nz.petal_length) * s
    pwid = d.uniform(nz.petal_width)
    rot0 = math.radians(d.uniform(nz.rotation_deg))
    tmpl = _petal_template(shape)
    petal_rgb = colour["petals"]
    for layer in range(layers):
        f_len, offset, shade0 = (1.0, 0.0, 1.0) if layer == 0 else (0.62, math.pi / n_pet, 0.86)
        ang_j, len_j, shade_j = d.vec(n_pet), d.vec(n_pet), d.vec(n_pet)
        angles = rot0 + offset + 2.0 * math.pi * (np.arange(n_pet) + (ang_j - 0.5) * 0.25) / n_pet
        lengths = plen * f_len * (0.9 + 0.2 * len_j)
        # petal i: template scaled (length, length * width), pushed out from the centre, rotated
        local = tmpl[None] * np.stack([lengths, lengths * pwid], axis=1)[:, None, :]
        local[:, :, 0] += 0.35 * rc
        c, si = np.cos(angles)[:, None], np.sin(angles)[:, None]
        x = local[:, :, 0] * c - local[:, :, 1] * si
        y = local[:, :, 0] * si + local[:, :, 1] * c
        polys = p.fix(np.stack([x, y], axis=2) @ head_m + head)
        for i in range(n_pet):
            col = _shade(petal_rgb, shade0 * (0.9 + 0.12 * shade_j[i]))
            p.fill([polys[i]], col, pid["petals"])
            p.outline([polys[i]], _shade(col, 0.75), pid["petals"])
    full[pid["petals"]] = p.seal(pid["petals"])
    meta.update(petal_count=n_pet, petal_layers=layers, petal_shape=shape,
                petal_length=round(plen, 6), petal_width=round(pwid, 6),
                rotation_deg=round(math.degrees(rot0), 6))

    # 5. centre: a disc with a phyllotactic pattern of darker seeds and a darker rim
    centre_rgb = colour["centre"]
    disc_pts = p.fix((_circle() * rc) @ head_m + head)
    p.fill([disc_pts], centre_rgb, pid["centre"])
    seeds = p.fix((_seeds() * rc) @ head_m + head)
    p.fill(list(seeds), _shade(centre_rgb, 0.72), pid["centre"])
    p.outline([disc_pts], _shade(centre_rgb, 0.8), pid["centre"])
    full[pid["centre"]] = p.seal(pid["centre"])

    # 6. grass-blade occluders in front of the flower
    n_occ = d.integer(nz.occluder_count)
    for _ in range(n_occ):
        c = d.jitter(spec.rgb(d.choice(clutter_pal)), nz.nuisance_jitter[1])
        p.fill([p.fix(_blade(d))], c, clutter_id)
    meta["occluder_count"] = n_occ

    # 7. lighting: a smooth grey field times a per-channel tint, fixed point with 128 = 1.0
    amp = d.uniform(nz.illumination)
    tint = d.uniform(nz.tint)
    field = 1.0 + amp * (2.0 * d.vec(9) - 1.0)
    chan = 1.0 + tint * (2.0 * d.vec(3) - 1.0)
    low = np.rint(128.0 * field.reshape(3, 3, 1) * chan.reshape(1, 1, 3)).astype(np.uint8)
    light = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    cv2.multiply(p.image, light, dst=p.image, scale=1.0 / 128.0)
    meta.update(illumination=round(amp, 6), tint=round(tint, 6))

    return p, meta, full


def render(spec: VariantSpec, seed: int, index: int, size: int | None = None) -> Sample:
    """Render sample ``index`` of the dataset ``(spec, seed)``: a pure function of its arguments.

    Args:
        spec: the variant.
        seed: the dataset's global seed (>= 0).
        index: sample index (>= 0); the label is ``index % spec.num_classes``.
        size: image side in pixels (64..512); default ``spec.size``.

    Returns:
        :class:`Sample` with image, label, mask, part map and the sampled parameters. ``meta``
        holds ``index``, ``seed``, ``size``, ``label``, ``class``, ``attempt`` (redraws needed for
        visibility); ``<part>_colour`` (colour name) and ``<part>_rgb`` (after jitter, before
        lighting) for stem, leaves, petals, centre; ``background`` (kind), ``background_base``,
        ``background_colours``, ``clutter_count``; the pose ``head_x``, ``head_y``, ``scale``,
        ``head_squash``, ``head_axis_deg``, ``centre_radius`` (fractions of the side),
        ``stem_curvature``, ``leaf_count``, ``petal_count``, ``petal_layers``, ``petal_shape``,
        ``petal_length``, ``petal_width``, ``rotation_deg``; ``occluder_count``,
        ``illumination``, ``tint``; ``<part>_visible_px`` for each discriminative part.

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
    return _render_sample(spec, seed, index, size, class_of(spec, index))


def _render_sample(spec: VariantSpec, seed: int, index: int, size: int, label: int) -> Sample:
    """:func:`render` with the label given: sample ``index``'s nuisance, painted as class ``label``.

    Rendering one ``(seed, index)`` with every label is the counterfactual the tests use to prove
    that the class lives only in the mask: the images are byte-identical outside it.
    """
    nz = spec.nuisance
    min_px = nz.min_visible_area * size * size
    for attempt in range(MAX_ATTEMPTS):
        d = _Draws(np.random.default_rng([seed, index, attempt]))
        painter, meta, full = _draw_scene(spec, d, label, size)
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
    mask = np.zeros((size, size), bool)
    for k in spec.discriminative_ids:
        mask |= painter.parts == k
    meta = {"index": index, "seed": seed, "size": size, "label": label,
            "class": spec.classes[label], "attempt": attempt,
            **meta, **{f"{part}_visible_px": v for part, v in visible.items()}}
    return Sample(image=painter.image, label=label, mask=mask, parts=painter.parts, meta=meta)
