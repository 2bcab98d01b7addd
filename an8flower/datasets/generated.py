"""Torch datasets of an8Flower: over a generated folder, and rendered on the fly.

Both yield ``(image, label, mask)`` as :class:`an8flower.datasets.base.ExplanationDataset` defines
(image float32 (3, H, W) in [0, 1] without a transform; mask bool (H, W), True on the visible
pixels of the discriminative parts), and the same item for the same sample: the folder's PNGs are
lossless copies of what the renderer returns. With ``return_parts=True`` an item is
``(image, label, mask, parts)`` with ``parts`` a uint8 (H, W) tensor of part ids (positions in
:attr:`parts`); :meth:`part_map` gives the part map of one item either way. Items are ordered by
sample index within the split.

**Resizing without leaking** (``resize=``). Shrinking an image averages several pixels into one:
a pixel next to a discriminative part takes some of the part's class colour. Resizing the mask
with nearest-neighbour would leave such pixels outside the mask, so the class could be read
outside it. :func:`resize_sample` therefore resizes the image with area interpolation
(``cv2.INTER_AREA``) and the mask with the *same* interpolation applied to the mask as 0/1
floats, keeping every pixel whose value is > 0: a pixel is in the resized mask exactly when any
mask pixel contributed to it ("any covered pixel"). No pixel outside the resized mask received
any class colour. The part map follows: a pixel that a discriminative part covers takes that part
(the one with the largest coverage where two do), any other pixel its nearest-neighbour part, so
``mask == isin(parts, discriminative ids)`` still holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset
from an8flower.errors import UsageError
from an8flower.layout import DEFAULT_PER_CLASS, SPLITS, check_counts, plan_indices
from an8flower.manifest import ManifestRow, decode_png
from an8flower.spec import VariantSpec, check_seed, resolve_spec

__all__ = ["An8Flower", "An8FlowerOnTheFly", "resize_sample"]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def _check_resize(resize: int | None) -> int | None:
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize < 1):
        raise UsageError(f"resize {resize!r}: expected None or a side in pixels >= 1")
    return resize


def resize_sample(image: np.ndarray, mask: np.ndarray, parts: np.ndarray, side: int,
                  discriminative_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize a sample to ``side`` x ``side`` without class colour outside the mask.

    See the module docstring: image by ``cv2.INTER_AREA``; mask = ``INTER_AREA(mask as float) > 0``;
    part map = the discriminative part covering the pixel most, else nearest-neighbour.

    Args:
        image: uint8 (H, W, 3). mask: bool (H, W). parts: uint8 (H, W) part ids.
        side: the output side. discriminative_ids: part ids of the discriminative parts.

    Returns:
        ``(image, mask, parts)`` at ``side`` x ``side``: uint8, bool, uint8.
    """
    import cv2

    if image.shape[:2] == (side, side):
        return image, mask, parts
    dsize = (side, side)
    image_r = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
    mask_r = cv2.resize(mask.astype(np.float32), dsize, interpolation=cv2.INTER_AREA) > 0
    parts_r = cv2.resize(parts, dsize, interpolation=cv2.INTER_NEAREST)
    if discriminative_ids:
        cover = np.stack([cv2.resize((parts == k).astype(np.float32), dsize, interpolation=cv2.INTER_AREA)
                          for k in discriminative_ids])
        best = np.asarray(discriminative_ids, np.uint8)[cover.argmax(axis=0)]
        parts_r = np.where(mask_r, best, parts_r)
    return image_r, mask_r, parts_r


class An8Flower(ExplanationDataset):
    """A generated an8Flower folder (``an8flower generate``) as a torch Dataset.

    Opening checks, cheaply (:func:`an8flower.verify.open_dataset`: two files read), that
    ``dataset.json`` is what generate writes for its spec, seed and per-class, that the manifest's
    SHA-256 is the recorded one and that every manifest row follows the index plan (label = index
    mod K, split and file names from the index). Each file read is checked
    (:func:`an8flower.verify.read_sample_file`, as ``export`` does) to lie inside ``root`` through
    no symbolic link, to be a regular file no larger than a PNG of ``dataset.json``'s size can be
    (before it is read) and to have that size in its header, before it is decoded.

    Args:
        root: the dataset folder (holding ``dataset.json`` and ``manifest.csv``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the PIL RGB image (see the base class).
        mask_transform: applied to the bool mask tensor.
        return_parts: also return the part map (a 4-tuple item).
        verify: also check the SHA-256 of every file's bytes against the manifest when it is read.
            Cost: one SHA-256 per file read, small beside decoding: a file read took 4% longer
            (0.49 against 0.47 ms per 224 px file, ``benchmarks/bench_dataset.py``). Off by
            default; ``an8flower verify`` checks a whole folder once.
        resize: side of the items, or None (default) for the native size; see
            :func:`resize_sample` (area interpolation, masks by any covered pixel).

    Attributes:
        classes: class names, index = label. parts: part names, index = part id.
        discriminative_parts: the parts the masks cover. info: the parsed ``dataset.json``.
        samples: ``(image path, label)`` pairs, as torchvision's ``ImageFolder``.

    Raises:
        DatasetNotFoundError: ``root`` or its ``dataset.json`` is missing (the message names the
            folder). DatasetFormatError: a malformed or inconsistent ``dataset.json`` or manifest
            (naming the entry or row), and, when an item is read, a file of the wrong size, outside
            the folder or (``verify=True``) with another hash.
    """

    has_masks = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_parts: bool = False,
        *,
        verify: bool = False,
        resize: int | None = None,
    ) -> None:
        from an8flower.verify import open_dataset

        super().__init__(root, _check_split(split), transform, mask_transform)
        self.verify = bool(verify)
        self.resize = _check_resize(resize)
        self.info, self.spec, rows = open_dataset(self.root)
        self.classes = tuple(self.info["classes"])
        self.parts = tuple(self.info["parts"])
        self.discriminative_parts = tuple(self.info["discriminative_parts"])
        self.return_parts = return_parts
        self.rows: list[ManifestRow] = sorted((r for r in rows if r.split == split), key=lambda r: r.index)
        self.samples = [(os.path.join(self.root, r.files["image"]), r.label) for r in self.rows]
        self.targets = [r.label for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, i: int, kind: str) -> np.ndarray:
        from an8flower.verify import read_sample_file

        path, data = read_sample_file(self.root, self.rows[i], kind, self.spec.size, check_hash=self.verify)
        return decode_png(data, kind, size=self.spec.size, name=path)

    def sample_index(self, i: int) -> int:
        """Global sample index (the renderer's ``index``) of item ``i``."""
        return self.rows[i].index

    def meta(self, i: int) -> dict:
        """Sampled parameters of item ``i`` (from the manifest)."""
        return dict(self.rows[i].meta)

    def _arrays(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, mask, parts = (self._read(i, k) for k in ("image", "mask", "parts"))
        if self.resize is None:
            return image, mask, parts
        return resize_sample(image, mask, parts, self.resize, self.spec.discriminative_ids)

    def part_map(self, i: int) -> torch.Tensor:
        """uint8 (H, W) part ids of item ``i`` (positions in :attr:`parts`), at the item's size."""
        if self.resize is None:
            return torch.from_numpy(np.array(self._read(i, "parts")))
        return torch.from_numpy(np.ascontiguousarray(self._arrays(i)[2]))

    def __getitem__(self, i: int):
        if self.resize is None and not self.return_parts:
            image, mask = self._read(i, "image"), self._read(i, "mask")
            return self._finish(image, self.rows[i].label, mask)
        image, mask, parts = self._arrays(i)
        item = self._finish(image, self.rows[i].label, mask)
        return item + (torch.from_numpy(np.array(parts)),) if self.return_parts else item

    def extra_repr(self) -> str:
        lines = [f"Variant: {self.info['variant']} (seed {self.info['seed']}, {self.info['size']} px)",
                 f"Discriminative parts: {', '.join(self.discriminative_parts)}"]
        if self.resize is not None:
            lines.append(f"Resized to: {self.resize} px")
        if self.verify:
            lines.append("Verify: SHA-256 of every file read")
        return "\n".join(lines)


class An8FlowerOnTheFly(ExplanationDataset):
    """An an8Flower split rendered on demand, no disk: item ``i`` is sample ``plan[i]``.

    Yields exactly the items :class:`An8Flower` yields for the folder that
    ``an8flower generate VARIANT --size SIZE --per-class PER_CLASS --seed SEED`` writes (same index
    plan, :func:`an8flower.layout.plan_indices`), with the same ``resize``.

    Args:
        variant_or_spec: built-in variant name, spec file path, or a :class:`VariantSpec`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: the side the samples are *rendered* at (64..512); default the spec's. Rendering at
            another size draws another picture of the same scene (the same as ``generate --size``).
        per_class: samples per class over all splits (default 1000: 700/100/200), bounded as
            ``generate`` bounds it (:func:`an8flower.layout.check_counts`).
        seed: global seed, ``0..2**63-1`` (:func:`an8flower.spec.check_seed`, as ``generate``).
        transform, mask_transform, return_parts: as :class:`An8Flower`.
        resize: side the rendered items are *resized* to, or None (default: the rendered size);
            see :func:`resize_sample` (area interpolation, masks by any covered pixel).
    """

    has_masks = True

    def __init__(
        self,
        variant_or_spec: str | os.PathLike[str] | VariantSpec,
        split: str = "train",
        size: int | None = None,
        per_class: int = DEFAULT_PER_CLASS,
        seed: int = 0,
        transform: Callable[[Any], Any] | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_parts: bool = False,
        *,
        resize: int | None = None,
    ) -> None:
        spec = resolve_spec(variant_or_spec, size)
        check_counts(spec.num_classes, per_class)
        super().__init__(f"<rendered {spec.name}>", _check_split(split), transform, mask_transform)
        self.spec = spec
        self.seed = check_seed(seed)
        self.per_class = per_class
        self.resize = _check_resize(resize)
        self.indices = plan_indices(spec, split, per_class)
        self.classes = spec.classes
        self.parts = spec.parts
        self.discriminative_parts = spec.discriminative
        self.return_parts = return_parts
        self.targets = [i % spec.num_classes for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def sample_index(self, i: int) -> int:
        """Global sample index of item ``i``."""
        return self.indices[i]

    def render(self, i: int):
        """The renderer's :class:`an8flower.render.Sample` for item ``i`` (at the rendered size)."""
        from an8flower.render import render

        return render(self.spec, self.seed, self.indices[i])

    def _arrays(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        s = self.render(i)
        if self.resize is None:
            return s.label, s.image, s.mask, s.parts
        return (s.label, *resize_sample(s.image, s.mask, s.parts, self.resize, self.spec.discriminative_ids))

    def meta(self, i: int) -> dict:
        """Sampled parameters of item ``i``."""
        return dict(self.render(i).meta)

    def part_map(self, i: int) -> torch.Tensor:
        """uint8 (H, W) part ids of item ``i``, at the item's size."""
        return torch.from_numpy(np.ascontiguousarray(self._arrays(i)[3]))

    def __getitem__(self, i: int):
        label, image, mask, parts = self._arrays(i)
        item = self._finish(image, label, mask)
        if self.return_parts:
            return item + (torch.from_numpy(np.ascontiguousarray(parts)),)
        return item

    def extra_repr(self) -> str:
        lines = [f"Variant: {self.spec.name} (seed {self.seed}, {self.spec.size} px, {self.per_class} per class)",
                 f"Discriminative parts: {', '.join(self.discriminative_parts)}"]
        if self.resize is not None:
            lines.append(f"Resized to: {self.resize} px")
        return "\n".join(lines)
