"""Torch datasets of an8Flower: over a generated folder, and rendered on the fly.

Both yield ``(image, label, mask)`` as :class:`an8flower.datasets.base.ExplanationDataset` defines
(image float32 (3, H, W) in [0, 1] without a transform; mask bool (H, W), True on the visible
pixels of the discriminative parts), and the same item for the same sample: the folder's PNGs are
lossless copies of what the renderer returns. With ``return_parts=True`` an item is
``(image, label, mask, parts)`` with ``parts`` a uint8 (H, W) tensor of part ids (positions in
:attr:`parts`); :meth:`part_map` gives the part map of one item either way. Items are ordered by
sample index within the split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset
from an8flower.errors import DatasetFormatError
from an8flower.generate import DEFAULT_PER_CLASS, SPLITS, plan_indices, resolve_spec
from an8flower.manifest import MANIFEST_NAME, ManifestRow, decode_png, read_dataset_json, read_manifest
from an8flower.spec import VariantSpec

__all__ = ["An8Flower", "An8FlowerOnTheFly"]


def _check_split(split: str) -> str:
    from an8flower.errors import UsageError

    if split not in SPLITS:
        raise UsageError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


class An8Flower(ExplanationDataset):
    """A generated an8Flower folder (``an8flower generate``) as a torch Dataset.

    Args:
        root: the dataset folder (holding ``dataset.json`` and ``manifest.csv``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the PIL RGB image (see the base class).
        mask_transform: applied to the bool mask tensor.
        return_parts: also return the part map (a 4-tuple item).

    Attributes:
        classes: class names, index = label. parts: part names, index = part id.
        discriminative_parts: the parts the masks cover. info: the parsed ``dataset.json``.
        samples: ``(image path, label)`` pairs, as torchvision's ``ImageFolder``.

    Raises:
        DatasetNotFoundError: ``root`` or its ``dataset.json`` is missing (the message names the
            folder). DatasetFormatError: a malformed ``dataset.json`` or manifest.
    """

    has_masks = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Optional[Callable[[Any], Any]] = None,
        mask_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        return_parts: bool = False,
    ) -> None:
        super().__init__(root, _check_split(split), transform, mask_transform)
        self.info = read_dataset_json(self.root)
        self.classes = tuple(self.info["classes"])
        self.parts = tuple(self.info["parts"])
        self.discriminative_parts = tuple(self.info["discriminative_parts"])
        self.return_parts = return_parts
        rows = [r for r in read_manifest(Path(self.root) / MANIFEST_NAME) if r.split == split]
        rows.sort(key=lambda r: r.index)
        for r in rows:
            if not 0 <= r.label < len(self.classes) or self.classes[r.label] != r.class_name:
                raise DatasetFormatError(f"{Path(self.root) / MANIFEST_NAME}: sample {r.index} has label {r.label} "
                                         f"and class {r.class_name!r}, which dataset.json does not pair")
        self.rows: list[ManifestRow] = rows
        self.samples = [(os.path.join(self.root, r.files["image"]), r.label) for r in rows]
        self.targets = [r.label for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _path(self, i: int, kind: str) -> str:
        return os.path.join(self.root, self.rows[i].files[kind])

    def sample_index(self, i: int) -> int:
        """Global sample index (the renderer's ``index``) of item ``i``."""
        return self.rows[i].index

    def meta(self, i: int) -> dict:
        """Sampled parameters of item ``i`` (from the manifest)."""
        return dict(self.rows[i].meta)

    def part_map(self, i: int) -> torch.Tensor:
        """uint8 (H, W) part ids of item ``i`` (positions in :attr:`parts`), at native resolution."""
        return torch.from_numpy(decode_png(self._path(i, "parts"), "parts").copy())

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = decode_png(self._path(i, "image"), "image")
        mask = decode_png(self._path(i, "mask"), "mask")
        item = self._finish(image, row.label, mask)
        return item + (self.part_map(i),) if self.return_parts else item

    def extra_repr(self) -> str:
        return (f"Variant: {self.info['variant']} (seed {self.info['seed']}, {self.info['size']} px)\n"
                f"Discriminative parts: {', '.join(self.discriminative_parts)}")


class An8FlowerOnTheFly(ExplanationDataset):
    """An an8Flower split rendered on demand, no disk: item ``i`` is sample ``plan[i]``.

    Yields exactly the items :class:`An8Flower` yields for the folder that
    ``an8flower generate VARIANT --size SIZE --per-class PER_CLASS --seed SEED`` writes (same index
    plan, :func:`an8flower.generate.plan_indices`).

    Args:
        variant_or_spec: built-in variant name, spec file path, or a :class:`VariantSpec`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: image side (64..512); default the spec's.
        per_class: samples per class over all splits (default 1000: 700/100/200).
        seed: global seed.
        transform, mask_transform, return_parts: as :class:`An8Flower`.
    """

    has_masks = True

    def __init__(
        self,
        variant_or_spec: str | os.PathLike[str] | VariantSpec,
        split: str = "train",
        size: Optional[int] = None,
        per_class: int = DEFAULT_PER_CLASS,
        seed: int = 0,
        transform: Optional[Callable[[Any], Any]] = None,
        mask_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        return_parts: bool = False,
    ) -> None:
        spec = resolve_spec(variant_or_spec, size)
        super().__init__(f"<rendered {spec.name}>", _check_split(split), transform, mask_transform)
        self.spec = spec
        self.seed = seed
        self.per_class = per_class
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
        """The renderer's :class:`an8flower.render.Sample` for item ``i``."""
        from an8flower.render import render

        return render(self.spec, self.seed, self.indices[i])

    def meta(self, i: int) -> dict:
        """Sampled parameters of item ``i``."""
        return dict(self.render(i).meta)

    def part_map(self, i: int) -> torch.Tensor:
        """uint8 (H, W) part ids of item ``i``."""
        return torch.from_numpy(np.ascontiguousarray(self.render(i).parts))

    def __getitem__(self, i: int):
        sample = self.render(i)
        item = self._finish(sample.image, sample.label, sample.mask)
        if self.return_parts:
            return item + (torch.from_numpy(np.ascontiguousarray(sample.parts)),)
        return item

    def extra_repr(self) -> str:
        return (f"Variant: {self.spec.name} (seed {self.seed}, {self.spec.size} px, {self.per_class} per class)\n"
                f"Discriminative parts: {', '.join(self.discriminative_parts)}")
