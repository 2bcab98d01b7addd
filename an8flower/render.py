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
(non-anti-aliased) rasterisation covers the pixel centre, *except* that every pixel whose final
value depends on a discriminative part's colour is labelled with that discriminative part (the one
drawn last where two may contribute). The mask is ``isin(parts, discriminative ids)``. So the
anti-aliased fringe of a discriminative part belongs to the mask, and **every pixel outside the
mask is byte-identical whatever colours the discriminative parts take** (every class, every
jitter): the class is readable only inside the mask.

The dependence is decided exactly, not estimated. OpenCV's anti-aliased drawing blends a colour
``c`` into a pixel ``d`` as ``d + (((c - d) * a + 127) >> 8)`` with an integer weight
``a <= 255`` and writes solid spans outright; the lighting is a rounded product. Each step is
non-decreasing in the pixel value under it, so each channel of the final image is a
non-decreasing function of the value a discriminative part left there. The renderer draws two
*bound* images beside the image: when a discriminative part is complete, they take the image with
0 (low bound) and 255 (high bound) on every pixel the part touched, and every later shape and the
lighting are applied to them as to the image. Whatever the part's colour, the final image lies
between the bounds channel by channel; where the bounds agree, the pixel cannot depend on any
discriminative colour. The mask is where they differ. The bounds never see a class colour, so the
mask and part map are the same for every label. (An earlier renderer tracked the contribution on
8-bit coverage canvases; two successive anti-aliased over-draws could round the coverage to 0 while
the image kept a one-level trace of the class colour on a few pixels next to the mask.)

**Visibility.** Each discriminative part keeps at least ``nuisance.min_visible_fraction`` of its
own area and ``nuisance.min_visible_area`` of the image area visible, both counted on the hard
part map (the part's hard pixels at the end over those right after it was drawn); a sample that
violates this is redrawn with ``attempt + 1``. The test depends on geometry only, never on a
colour or the class, so every label (and every intervention of :mod:`an8flower.intervene`) of
a sample is drawn at the same attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from an8flower.errors import SpecError, UsageError
from an8flower.spec import MAX_SIZE, MIN_SIZE, VariantSpec

__all__ = ["Sample", "SceneChange", "class_of", "render", "render_as", "MAX_ATTEMPTS"]

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


@cache
def _circle(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    out = np.stack([np.cos(t), np.sin(t)], axis=1)
    out.setflags(write=False)
    return out


@cache
def _seeds(n: int = 13) -> np.ndarray:
    """(n, 12, 2) small discs in a sunflower (golden-angle) pattern inside the unit disc."""
    k = np.arange(1, n + 1)
    r = 0.72 * np.sqrt(k / n)
    th = k * math.pi * (3.0 - math.sqrt(5.0))
    centres = np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
    out = _circle(12)[None] * 0.09 + centres[:, None, :]
    out.setflags(write=False)
    return out


@cache
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


@cache
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
# Painter: image, part map and the bounds that decide the mask, drawn in lockstep


#: Channel-summing matrix for ``cv2.transform``.
_SUM3 = np.ones((1, 3), np.float32)


@cache
def _constant(size: int, value: int) -> np.ndarray:
    """A read-only (size, size) uint8 image filled with ``value``."""
    out = np.full((size, size), value, np.uint8)
    out.setflags(write=False)
    return out


@cache
def _extremes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Black and white (size, size, 3) uint8 images (read-only)."""
    black, white = np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)
    black.setflags(write=False)
    white.setflags(write=False)
    return black, white


class _Painter:
    """Draws every shape on the image, on the hard part map and, for the mask, on two bounds.

    * ``image``: anti-aliased colour fill (``LINE_AA``);
    * ``parts``: hard (``LINE_8``) fill with the part id (painter's order);
    * ``foot[k]`` per discriminative part ``k``: anti-aliased fill with 255, so ``foot[k] > 0``
      exactly where part ``k`` itself changed a pixel (a blend with weight ``a >= 1`` writes at
      least 1 there; ``a = 0`` changes nothing);
    * ``bounds[0]`` / ``bounds[1]`` (low / high): when part ``k`` is complete (:meth:`seal`) they
      take the image with 0 (low) and 255 (high) on ``foot[k]``; every later shape and the lighting
      are applied to them as to the image. OpenCV's anti-aliased blend
      ``d + (((c - d) * a + 127) >> 8)`` (``a <= 255``), its solid spans and the lighting product
      are non-decreasing in the value under them, so whatever colour (class, jitter) part ``k``
      takes, each channel of the final image lies between the bounds: a pixel where they agree
      has the same value for every colour of every discriminative part. The mask is where they
      differ (:meth:`finish`). It does not depend on the label (the bounds never see a
      discriminative colour); it does see the colours of the parts drawn later, whose blends'
      rounding decides whether a faint trace survives. Shapes are drawn on the bounds only if they
      may reach the box of the sealed parts (with a margin for anti-aliasing); outside it the
      bounds are not read, and the image is copied into them when the box grows.

    A part in ``removed`` is not drawn, except on ``geom``: a second hard part map, kept only when
    parts are removed, on which every part is drawn, so that the visibility test of an intervened
    scene is the original's.
    """

    def __init__(self, size: int, disc_ids: tuple[int, ...], removed: frozenset[int] = frozenset()) -> None:
        self.size = size
        self.scale = size * _ONE
        self.image = np.empty((size, size, 3), np.uint8)
        self.parts = np.zeros((size, size), np.uint8)
        self.geom = np.zeros((size, size), np.uint8) if removed else None
        self.disc_ids = disc_ids
        self.removed = removed
        #: Outline width in pixels: about 1/256 of the side (at least 1 px).
        self.line = max(1, round(size / 256))
        self.bounds: np.ndarray | None = None  # (2, H, W, 3): lo, hi
        #: The bounds' box [x0, y0, x1, y1) in pixels, and in fixed point widened by a shape's reach.
        self.box = [size, size, 0, 0]
        self.fbox = self.box
        #: Discriminative parts sealed so far, in drawing order.
        self.order: list[int] = []
        self.foot: dict[int, np.ndarray] = {}
        #: Per discriminative part (removed ones included), the box its shapes may touch.
        self.pbox: dict[int, list[int]] = {}

    def fix(self, pts: np.ndarray) -> np.ndarray:
        """Unit coordinates (..., 2) -> int32 fixed-point pixel coordinates."""
        return np.rint(pts * self.scale).astype(np.int32)

    def _draw(self, pts: list[np.ndarray], colour: tuple[int, int, int], pid: int, draw) -> None:
        """``draw(canvas, value, line_type)`` on every canvas the shape belongs to."""
        if pid in self.disc_ids:
            x, y, w, h = cv2.boundingRect(pts[0] if len(pts) == 1 else np.concatenate(pts))
            m, n = 2 + self.line, self.size  # anti-aliasing and line width reach beyond the vertices
            reach = (max(0, (x >> _SHIFT) - m), max(0, (y >> _SHIFT) - m),
                     min(n, ((x + w) >> _SHIFT) + 1 + m), min(n, ((y + h) >> _SHIFT) + 1 + m))
            b = self.pbox.setdefault(pid, list(reach))
            b[:] = min(b[0], reach[0]), min(b[1], reach[1]), max(b[2], reach[2]), max(b[3], reach[3])
        if self.geom is not None:
            draw(self.geom, pid, cv2.LINE_8)
            if pid in self.removed:
                return
        draw(self.image, colour, cv2.LINE_AA)
        draw(self.parts, pid, cv2.LINE_8)
        if pid in self.disc_ids:
            foot = self.foot.get(pid)
            if foot is None:
                foot = self.foot[pid] = np.zeros((self.size, self.size), np.uint8)
            draw(foot, 255, cv2.LINE_AA)
        elif self.bounds is not None:
            x, y, w, h = cv2.boundingRect(pts[0] if len(pts) == 1 else np.concatenate(pts))
            b = self.fbox
            if x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h:  # may reach the box
                draw(self.bounds[0], colour, cv2.LINE_AA)
                draw(self.bounds[1], colour, cv2.LINE_AA)

    def fill(self, pts: list[np.ndarray], colour: tuple[int, int, int], pid: int) -> None:
        """Fill polygons (fixed point; disjoint if several) with ``colour`` as part ``pid``."""
        self._draw(pts, colour, pid, lambda c, v, t: cv2.fillPoly(c, pts, v, t, _SHIFT))

    def outline(self, pts: list[np.ndarray], colour: tuple[int, int, int], pid: int,
                closed: bool = True) -> None:
        """Draw outlines (fixed-point polylines, ``self.line`` px) in ``colour`` as part ``pid``."""
        w = self.line
        self._draw(pts, colour, pid, lambda c, v, t: cv2.polylines(c, pts, closed, v, w, t, _SHIFT))

    def seal(self, pid: int) -> int:
        """Part ``pid`` is complete: put its footprint into the bounds (0 in ``lo``, 255 in ``hi``).

        Returns:
            The part's pixels in the hard part map of the unintervened scene (its unoccluded area,
            for the visibility test); 0 for a non-discriminative part.
        """
        if pid not in self.disc_ids:
            return 0
        count = self.hard_count(pid)
        foot = self.foot.get(pid)
        if foot is None:  # removed (or drew nothing)
            return count
        reach = self.pbox[pid]
        if self.bounds is None:  # only the box must hold the image: outside it nothing is read
            self.bounds = np.empty((2, self.size, self.size, 3), np.uint8)
            x0, y0, x1, y1 = self.box = list(reach)
            self.bounds[:, y0:y1, x0:x1] = self.image[y0:y1, x0:x1]
        else:
            bx0, by0, bx1, by1 = self.box
            x0, y0 = min(bx0, reach[0]), min(by0, reach[1])
            x1, y1 = max(bx1, reach[2]), max(by1, reach[3])
            # the new box minus the old one: strips above, below, left and right of the old box
            both, image = self.bounds, self.image
            both[:, y0:by0, x0:x1] = image[y0:by0, x0:x1]
            both[:, by1:y1, x0:x1] = image[by1:y1, x0:x1]
            both[:, by0:by1, x0:bx0] = image[by0:by1, x0:bx0]
            both[:, by0:by1, bx1:x1] = image[by0:by1, bx1:x1]
            self.box = [x0, y0, x1, y1]
        m = 3 + self.line
        self.fbox = [(self.box[0] - m) << _SHIFT, (self.box[1] - m) << _SHIFT,
                     (self.box[2] + m) << _SHIFT, (self.box[3] + m) << _SHIFT]
        x0, y0, x1, y1 = reach
        touched = foot[y0:y1, x0:x1]
        black, white = _extremes(self.size)
        cv2.copyTo(black[y0:y1, x0:x1], touched, self.bounds[0, y0:y1, x0:x1])
        cv2.copyTo(white[y0:y1, x0:x1], touched, self.bounds[1, y0:y1, x0:x1])
        self.order.append(pid)
        return count

    def hard_count(self, pid: int) -> int:
        """Pixels of the hard part map of the unintervened scene labelled ``pid`` (discriminative).

        This is what the visibility test counts: it depends on the geometry only, not on any
        colour, nor on which parts an intervention leaves out.
        """
        b = self.pbox.get(pid)
        if b is None:
            return 0
        hard = self.parts if self.geom is None else self.geom
        return int(np.count_nonzero(hard[b[1]:b[3], b[0]:b[2]] == pid))

    def light(self, light: np.ndarray) -> None:
        """Multiply the image, and the bounds inside their box, by ``light / 128`` (uint8)."""
        cv2.multiply(self.image, light, dst=self.image, scale=1.0 / 128.0)
        if self.bounds is not None:
            x0, y0, x1, y1 = self.box
            win = light[y0:y1, x0:x1]
            for b in self.bounds:
                cv2.multiply(b[y0:y1, x0:x1], win, dst=b[y0:y1, x0:x1], scale=1.0 / 128.0)

    def finish(self) -> tuple[np.ndarray, dict[int, int]]:
        """Label every pixel whose value depends on a discriminative colour with that part.

        After :meth:`light`. Where two discriminative parts may contribute (both touched the
        pixel), the one drawn last (on top) wins.

        Returns:
            The mask, (H, W) bool: the pixels of the part map labelled with a discriminative part;
            and per discriminative part id, its pixels in the part map.
        """
        mask = np.zeros((self.size, self.size), bool)
        if self.bounds is None:
            return mask, {k: 0 for k in self.disc_ids}
        x0, y0, x1, y1 = self.box
        win = self.parts[y0:y1, x0:x1]
        varies = cv2.transform(cv2.absdiff(self.bounds[0, y0:y1, x0:x1], self.bounds[1, y0:y1, x0:x1]),
                               _SUM3)  # the sum of the channels' differences (saturated): > 0 iff any
        for i, k in enumerate(self.order):
            where = varies if i == 0 else cv2.min(varies, self.foot[k][y0:y1, x0:x1])
            cv2.copyTo(_constant(self.size, k)[y0:y1, x0:x1], where, win)
        counts = {}
        inside = mask[y0:y1, x0:x1]
        for k in self.disc_ids:
            on = win == k
            counts[k] = int(np.count_nonzero(on))
            inside |= on
        return mask, counts


# ---------------------------------------------------------------------------------------------
# Scene


def _background(p: _Painter, d: _Draws, spec: VariantSpec, kind: str, meta: dict,
                base: tuple[str, tuple[int, int, int]] | None = None) -> None:
    """Paint ``plain``, ``gradient`` or two-octave value-``noise`` background into ``p.image``.

    ``base``: an intervention's (name, RGB) replacing both background colours (drawn all the same).
    """
    nz = spec.nuisance
    pal = spec.palette("background")
    c1n, c2n = d.choice(pal), d.choice(pal)
    rgb1, rgb2 = spec.rgb(c1n), spec.rgb(c2n)
    if base is not None:
        (c1n, rgb1), (c2n, rgb2) = base, base
    c1 = np.array(d.jitter(rgb1, d.integer(nz.nuisance_jitter)), np.float32)
    c2 = np.array(d.jitter(rgb2, d.integer(nz.nuisance_jitter)), np.float32)
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
        t2 = cv2.GaussianBlur(d.vec(g * g).astype(np.float32).reshape(g, g), (3, 3), 0.8,
                              borderType=cv2.BORDER_REFLECT)
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


@cache
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


@dataclass(frozen=True)
class SceneChange:
    """An intervention on a scene (built and checked by :mod:`an8flower.intervene`).

    Attributes:
        colours: ``(part, colour name, RGB)`` triples: the part's base colour, before jitter and
            lighting, replacing what the class rule or the part's palette gave it.
        removed: parts left out of the picture (not painted; their random draws are still made).
    """

    colours: tuple[tuple[str, str, tuple[int, int, int]], ...] = ()
    removed: frozenset[str] = frozenset()

    def base(self, part: str) -> tuple[str, tuple[int, int, int]] | None:
        for p, name, rgb in self.colours:
            if p == part:
                return name, rgb
        return None


_NO_CHANGE = SceneChange()


def _draw_scene(spec: VariantSpec, d: _Draws, label: int, size: int,
                change: SceneChange = _NO_CHANGE) -> tuple[_Painter, dict, dict[int, int]]:
    """Draw one scene; ``label`` is read only to pick the discriminative parts' colours.

    ``change`` substitutes base colours and leaves parts out; it never changes which random draws
    are made, so the geometry and every other colour stay as in the unchanged scene.

    Returns:
        The painter (image, part map, bounds, lighting applied), the sampled parameters and, for
        each discriminative part id, its pixels in the hard part map when it was drawn (before
        later parts hid any).
    """
    nz = spec.nuisance
    pid = {name: i for i, name in enumerate(spec.parts)}
    disc = spec.discriminative
    p = _Painter(size, spec.discriminative_ids, frozenset(pid[q] for q in change.removed))
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
        name, rgb = change.base(part) or (name, spec.rgb(name))
        jittered = d.jitter(rgb, amount)
        colour[part] = jittered
        meta[f"{part}_colour"] = name
        meta[f"{part}_rgb"] = list(jittered)

    # 1. background, and clutter behind the flower
    kind = d.choice(nz.backgrounds)
    base_kind = kind if kind != "clutter" else ("plain", "gradient", "noise")[int(d.u() * 3)]
    meta["background"] = kind
    meta["background_base"] = base_kind
    _background(p, d, spec, base_kind, meta, change.base("background"))
    clutter_part = "clutter" if "clutter" in pid else "background"
    clutter_id = pid[clutter_part]
    clutter_pal = spec.palette(clutter_part)
    clutter_base = change.base(clutter_part)

    def clutter_colour() -> tuple[int, int, int]:
        rgb = spec.rgb(d.choice(clutter_pal))
        return d.jitter(rgb if clutter_base is None else clutter_base[1], nz.nuisance_jitter[1])

    n_clutter = d.integer(nz.clutter_count) if kind == "clutter" else 0
    for _ in range(n_clutter):
        c = clutter_colour()
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
        ca, sa = np.cos(angles)[:, None], np.sin(angles)[:, None]
        x = local[:, :, 0] * ca - local[:, :, 1] * sa
        y = local[:, :, 0] * sa + local[:, :, 1] * ca
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
        c = clutter_colour()
        p.fill([p.fix(_blade(d))], c, clutter_id)
    meta["occluder_count"] = n_occ

    # 7. lighting: a smooth grey field times a per-channel tint, fixed point with 128 = 1.0
    amp = d.uniform(nz.illumination)
    tint = d.uniform(nz.tint)
    field = 1.0 + amp * (2.0 * d.vec(9) - 1.0)
    chan = 1.0 + tint * (2.0 * d.vec(3) - 1.0)
    low = np.rint(128.0 * field.reshape(3, 3, 1) * chan.reshape(1, 1, 3)).astype(np.uint8)
    p.light(cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR))
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
    return render_as(spec, seed, index, size, class_of(spec, index))


def render_as(spec: VariantSpec, seed: int, index: int, size: int, label: int,
              change: SceneChange = _NO_CHANGE) -> Sample:
    """:func:`render` with the label given: sample ``index``'s nuisance, painted as class ``label``.

    Rendering one ``(seed, index)`` with every label is the counterfactual the tests use to prove
    that the class lives only in the mask: the images are byte-identical outside it. ``change``
    (an intervention) substitutes base colours and leaves parts out; the visibility test counts
    the hard part map of the unchanged scene, so the accepted attempt, hence the geometry, is the
    original's.
    """
    nz = spec.nuisance
    min_px = nz.min_visible_area * size * size
    for attempt in range(MAX_ATTEMPTS):
        d = _Draws(np.random.default_rng([seed, index, attempt]))
        painter, meta, full = _draw_scene(spec, d, label, size, change)
        if all(painter.hard_count(k) >= max(min_px, nz.min_visible_fraction * full[k])
               for k in spec.discriminative_ids):
            break
    else:
        raise SpecError(
            f"spec {spec.name!r}: discriminative parts not visible enough in {MAX_ATTEMPTS} draws "
            f"(sample {index}); relax nuisance.min_visible_fraction / min_visible_area"
        )
    mask, counts = painter.finish()
    visible = {part: counts[k] for part, k in zip(spec.discriminative, spec.discriminative_ids, strict=True)}
    meta = {"index": index, "seed": seed, "size": size, "label": label,
            "class": spec.classes[label], "attempt": attempt,
            **meta, **{f"{part}_visible_px": v for part, v in visible.items()}}
    return Sample(image=painter.image, label=label, mask=mask, parts=painter.parts, meta=meta)
