"""The on-disk layout of an an8Flower dataset folder: what ``generate`` writes, what every reader expects.

One module holds the layout so that the writer (:mod:`an8flower.generate`) and the readers (the
loaders in :mod:`an8flower.datasets`, :mod:`an8flower.verify`, :mod:`an8flower.export`,
:mod:`an8flower.croissant`, :mod:`an8flower.datacard`) agree by construction and no reader imports
the writer. A dataset folder holds::

    DIR/
      dataset.json                            spec, version, seed, size, counts, hashes (written last)
      manifest.csv                            one row per sample (:mod:`an8flower.manifest`)
      DATACARD.md, croissant.json             the data card and its Croissant JSON-LD
      images/<split>/<LL-class>/<index>.png   RGB, 8 bit
      masks/<split>/<LL-class>/<index>.png    1-bit: 1 = visible pixel of a discriminative part
      parts/<split>/<LL-class>/<index>.png    8-bit palette: value = part id

**Index plan.** A dataset of ``K`` classes and ``N`` samples per class holds the sample indices
``0 .. K*N - 1``. Sample ``i`` is ``render(spec, seed, i)``; its class is ``i % K`` and its
per-class ordinal is ``i // K``. Splits are cut on the ordinal, so every split holds exactly the
same number of samples of each class and is a contiguous index range::

    train: ordinals [0, n_train)                 indices [0, K*n_train)
    val:   ordinals [n_train, n_train + n_val)   indices [K*n_train, K*(n_train + n_val))
    test:  the rest                              indices [K*(n_train + n_val), K*N)

The default is ``N = 1000`` (the original release's order of magnitude) cut 70/10/20:
700 train, 100 validation and 200 test images per class, i.e. 6,000 images for ``single-6c`` and
12,000 for ``double-12c``. For other ``N`` see :func:`split_sizes`. No k-fold split is written: the
validation split serves model selection, and folds over ``train`` can be cut from the manifest.

**Bounds.** ``per_class`` is at most :data:`MAX_PER_CLASS` and a dataset at most
:data:`MAX_SAMPLES` samples (the file names have :data:`INDEX_DIGITS` digits); a reader never
reads more manifest rows than that (nor than ``dataset.json``'s ``num_samples``).

While ``generate`` runs, the folder also holds :data:`LOCK_NAME`; an unfinished generation keeps
:data:`WORK_DIR`. Neither is part of a finished dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from an8flower.defaults import DEFAULT_PER_CLASS, MAX_PER_CLASS  # defined once, there
from an8flower.errors import UsageError
from an8flower.png import KINDS
from an8flower.spec import VariantSpec

__all__ = [
    "DATASET_JSON", "MANIFEST_NAME", "DATACARD_NAME", "CROISSANT_NAME", "WORK_DIR", "LOCK_NAME", "FORMAT",
    "KINDS", "KIND_FOLDERS", "SPLITS", "SPLIT_FRACTIONS", "DEFAULT_PER_CLASS", "INDEX_DIGITS", "MAX_PER_CLASS",
    "MAX_SAMPLES", "IndexPlan", "split_sizes", "check_counts", "plan_indices", "class_folder", "label_digits",
    "sample_paths", "expected_row", "parse_shard", "dataset_plan", "CODE_MODULES", "code_sha256",
]

#: File names at the top of a dataset folder.
DATASET_JSON = "dataset.json"
MANIFEST_NAME = "manifest.csv"
DATACARD_NAME = "DATACARD.md"
CROISSANT_NAME = "croissant.json"
#: Hidden folder of an unfinished generation (plan, per-chunk row journals); removed at the end.
WORK_DIR = ".an8flower-work"
#: Lock file of a running ``generate`` (:mod:`an8flower.folderlock`); removed when it ends.
LOCK_NAME = ".an8flower.lock"
#: Format tag written into ``dataset.json`` (bumped when the layout changes). Format 1 named the
#: class folders by class name alone; format 2 prefixes the label.
FORMAT = "an8flower-dataset/2"
#: The top folder each kind of sample file lives under.
KIND_FOLDERS: dict[str, str] = {"image": "images", "mask": "masks", "parts": "parts"}

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Fractions of the samples of each class that go to train / val / test.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
#: Width of the zero-padded sample index in file names.
INDEX_DIGITS = 6
#: Largest number of samples of one dataset (the file names have six digits).
MAX_SAMPLES = 10**INDEX_DIGITS


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_sizes(per_class: int) -> dict[str, int]:
    """Samples per class in each split for ``per_class`` samples per class.

    ``n_val = max(1, round(0.1 N))``, ``n_test = max(1, round(0.2 N))`` (halves rounded up) and
    ``n_train = N - n_val - n_test``: 1000 -> 700/100/200, 100 -> 70/10/20, 10 -> 7/1/2,
    5 -> 3/1/1, 3 -> 1/1/1.

    Raises:
        UsageError: ``per_class`` is not an integer in 3..:data:`MAX_PER_CLASS` (every split needs
            a sample of each class).
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 3:
        raise UsageError(f"per-class {per_class!r}: must be an integer >= 3 (one sample of each class per split)")
    if per_class > MAX_PER_CLASS:
        raise UsageError(f"per-class {per_class}: at most {MAX_PER_CLASS:,} images per class")
    n_val = max(1, _round_half_up(SPLIT_FRACTIONS["val"] * per_class))
    n_test = max(1, _round_half_up(SPLIT_FRACTIONS["test"] * per_class))
    return {"train": per_class - n_val - n_test, "val": n_val, "test": n_test}


@dataclass(frozen=True)
class IndexPlan:
    """Which sample index goes to which class and split (see the module docstring).

    Attributes:
        num_classes: K.
        per_class: N, samples per class over all splits.
    """

    num_classes: int
    per_class: int

    @property
    def sizes(self) -> dict[str, int]:
        """Samples per class in each split."""
        return split_sizes(self.per_class)

    @property
    def total(self) -> int:
        """Number of samples, K * N."""
        return self.num_classes * self.per_class

    def class_of(self, index: int) -> int:
        """Label of sample ``index``: ``index % K`` (as :func:`an8flower.render.class_of`)."""
        return index % self.num_classes

    def split_range(self, split: str) -> range:
        """The indices of ``split``, a contiguous range."""
        if split not in SPLITS:
            raise UsageError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        sizes = self.sizes
        start = 0
        for s in SPLITS:
            if s == split:
                return range(start * self.num_classes, (start + sizes[s]) * self.num_classes)
            start += sizes[s]
        raise AssertionError("unreachable")

    def split_of(self, index: int) -> str:
        """Split of sample ``index``."""
        if not 0 <= index < self.total:
            raise IndexError(f"sample index {index} outside 0..{self.total - 1}")
        ordinal, sizes = index // self.num_classes, self.sizes
        if ordinal < sizes["train"]:
            return "train"
        return "val" if ordinal < sizes["train"] + sizes["val"] else "test"


def check_counts(num_classes: int, per_class: int) -> int:
    """Check ``per_class`` (:func:`split_sizes`) and the total ``num_classes * per_class``.

    Returns:
        The number of samples.

    Raises:
        UsageError: ``per_class`` outside 3..:data:`MAX_PER_CLASS`, or more than
            :data:`MAX_SAMPLES` samples in all.
    """
    split_sizes(per_class)
    total = num_classes * per_class
    if total > MAX_SAMPLES:
        raise UsageError(f"per-class {per_class}: {num_classes} classes x {per_class:,} = {total:,} images, "
                         f"more than the {MAX_SAMPLES:,} a dataset may hold")
    return total


def plan_indices(spec: VariantSpec, split: str, per_class: int = DEFAULT_PER_CLASS) -> range:
    """The sample indices that ``generate`` writes to ``split`` (used by the on-the-fly dataset)."""
    return IndexPlan(spec.num_classes, per_class).split_range(split)


def class_folder(spec: VariantSpec, label: int) -> str:
    """Folder name of class ``label``: the zero-padded label, a hyphen, the class name.

    E.g. ``00-centre-red`` (at least two digits, more for 100+ classes). Folder names sort in label
    order, so torchvision's ``ImageFolder`` (which numbers the folders in sorted order) gives every
    image the label :class:`an8flower.An8Flower` gives it.
    """
    return f"{label:0{label_digits(spec)}d}-{spec.classes[label]}"


def label_digits(spec: VariantSpec) -> int:
    """Digits of the label in class folder names: at least two, more for 100+ classes."""
    return max(2, len(str(spec.num_classes - 1)))


def sample_paths(spec: VariantSpec, index: int, split: str, label: int) -> dict[str, str]:
    """Relative paths of sample ``index``'s files:
    ``{kind: "<kind folder>/<split>/<class folder>/<index>.png"}`` (see :func:`class_folder`)."""
    name = f"{index:0{INDEX_DIGITS}d}.png"
    folder = class_folder(spec, label)
    return {k: f"{KIND_FOLDERS[k]}/{split}/{folder}/{name}" for k in KINDS}


def expected_row(spec: VariantSpec, plan: IndexPlan, index: int) -> dict[str, Any]:
    """What the manifest row of sample ``index`` must say, apart from hashes and sampled parameters:
    ``{"index", "split", "class", "label", "files"}``."""
    label = plan.class_of(index)
    split = plan.split_of(index)
    return {"index": index, "split": split, "class": spec.classes[label], "label": label,
            "files": sample_paths(spec, index, split, label)}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (1-based: shard I of N) into ``(I, N)``; None stays None.

    Raises:
        UsageError: naming ``--shard`` and the expected form.
    """
    if text is None:
        return None
    parts = str(text).split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 1/4 (shard I of N, 1 <= I <= N)") from None
    if n < 1 or not 1 <= i <= n:
        raise UsageError(f"--shard {text!r}: expected 1 <= I <= N (shard I of N, counted from 1)")
    return i, n


def dataset_plan(spec: VariantSpec, seed: int, per_class: int) -> dict[str, Any]:
    """The entries of ``dataset.json`` that follow from (spec, seed, per_class) alone.

    ``generate`` writes them; ``verify`` and the loaders recompute them from a folder's own
    ``spec``, ``seed`` and ``per_class`` and compare.
    """
    plan = IndexPlan(spec.num_classes, per_class)
    digits = label_digits(spec)
    return {
        "format": FORMAT,
        "variant": spec.name,
        "spec": spec.to_dict(),
        "spec_sha256": spec.sha256(),
        "seed": seed,
        "size": spec.size,
        "per_class": per_class,
        "split_sizes_per_class": plan.sizes,
        "split_index_ranges": {s: [plan.split_range(s).start, plan.split_range(s).stop] for s in SPLITS},
        "classes": list(spec.classes),
        "class_folders": [class_folder(spec, c) for c in range(spec.num_classes)],
        "parts": list(spec.parts),
        "discriminative_parts": list(spec.discriminative),
        "num_samples": plan.total,
        "counts": {s: {c: plan.sizes[s] for c in spec.classes} for s in SPLITS},
        "layout": {k: f"{KIND_FOLDERS[k]}/{{split}}/{{label:0{digits}d}}-{{class}}/{{index:0{INDEX_DIGITS}d}}.png"
                   for k in KINDS},
        "encoding": {
            "image": "RGB, 8 bits per channel",
            "mask": "1-bit greyscale; 1 (white) = visible pixel of a discriminative part, 0 = other",
            "parts": "8-bit palette; pixel value = part id = position in 'parts' (0 = background)",
        },
        "manifest": MANIFEST_NAME,
        "data_card": DATACARD_NAME,
        "croissant": CROISSANT_NAME,
    }


#: Modules whose source decides the bytes of a dataset; their hash guards resumes across code changes.
CODE_MODULES: tuple[str, ...] = ("an8flower.spec", "an8flower.render", "an8flower.png")


def code_sha256() -> str:
    """SHA-256 over the source files of :data:`CODE_MODULES` (name, NUL, bytes, NUL each).

    Recorded in ``dataset.json`` and in an unfinished generation's plan, so that a resume or a shard
    run by different renderer code (e.g. a development checkout between two commits) is refused
    instead of mixing samples of two renderers.
    """
    import hashlib
    import importlib

    h = hashlib.sha256()
    for name in CODE_MODULES:
        source = importlib.import_module(name).__file__
        assert source is not None, f"{name} has no source file"  # CODE_MODULES are this package's .py modules
        h.update(name.encode() + b"\0" + Path(source).read_bytes() + b"\0")
    return h.hexdigest()
