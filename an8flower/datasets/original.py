"""The original an8Flower release (Oramas et al., ICLR 2019), as the authors distributed it.

Layout (``root`` is the folder holding the variant folders)::

    an8Flower_single_6c/<class>/<image>          an8Flower_single_6c_MASK/<class>/<mask>
    an8Flower_double_12c/<class>/<image>         an8Flower_double_12c_MASK/<class>/<mask>

Each mask has the image's file name (or the same stem with another image extension). Masks are
stored **dark on light**: the relevant (discriminative) part is dark. A mask pixel is relevant
when its grey level (PIL ``"L"`` conversion) is ``< threshold`` (default 128) for
``mask_polarity="dark"``, or ``>= threshold`` for ``"light"``.

Classes are the visible sub-folders of the variant folder (names starting with ``.``, such as
``.ipynb_checkpoints``, are not classes) in natural order (numbers by value: ``class2`` before
``class10``); label = position in that order. Images are decoded within ``max_pixels`` (default
:data:`an8flower.untrusted.PHOTO_MAX_PIXELS`, checked from the header before decoding).

**Splits.** The release ships no split files (as far as we know), so ``split="all"`` is the whole
release and ``"train"`` / ``"val"`` / ``"test"`` are a deterministic, stratified split defined
here: within each class the files are ordered by ``sha256(f"{seed}/{class}/{file name}")``, and
the first ``round(fractions[0] * n)`` go to train, the next ``round(fractions[1] * n)`` to val,
the rest to test. It depends only on the file names, the fractions and the seed (not on the
file system's listing order, the platform or library versions).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset, Item
from an8flower.datasets.files import (
    PHOTO_MAX_PIXELS,
    check_split,
    list_images,
    list_subdirs,
    load_image,
    natural_key,
    require_dir,
)
from an8flower.errors import DatasetFormatError, UsageError

__all__ = [
    "An8FlowerOriginal",
    "split_members",
    "mask_from_image",
]

VARIANTS = ("single_6c", "double_12c")
SPLITS = ("all", "train", "val", "test")
POLARITIES = ("dark", "light")


def split_members(names: Sequence[str], class_name: str, fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Assign the files of one class to train/val/test (see the module docstring).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in hash order.
    """
    def key(name: str) -> bytes:
        return hashlib.sha256(f"{seed}/{class_name}/{name}".encode()).digest()

    ordered = sorted(names, key=key)
    n_train = round(fractions[0] * len(ordered))
    n_val = round(fractions[1] * len(ordered))
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


def mask_from_image(grey: np.ndarray, polarity: str = "dark", threshold: int = 128) -> np.ndarray:
    """Relevant pixels of a grey mask image: ``grey < threshold`` (dark) or ``>= threshold`` (light)."""
    return grey < threshold if polarity == "dark" else grey >= threshold


class An8FlowerOriginal(ExplanationDataset):
    """Images and ground-truth masks of the original an8Flower release.

    Items are ``(image, label, mask)``: ``image`` float32 (3, H, W) in [0, 1] (or
    ``transform(PIL RGB image)``), ``label`` the class position, ``mask`` the bool (H, W)
    relevant region (must be the image's size).

    Args:
        root: folder holding ``an8Flower_<variant>/`` and ``an8Flower_<variant>_MASK/``.
        variant: ``"single_6c"`` or ``"double_12c"`` (``"single-6c"`` / ``"double-12c"`` accepted).
        split: ``"all"`` (default: the release has no split) or ``"train"`` / ``"val"`` /
            ``"test"`` of the deterministic split described in the module docstring.
        transform: applied to the PIL RGB image.
        mask_transform: applied to the bool mask tensor.
        mask_polarity: ``"dark"`` (default: relevant = dark) or ``"light"``.
        threshold: grey level separating relevant from background (default 128).
        fractions: (train, val, test) fractions, non-negative, summing to 1 (default 0.7/0.1/0.2).
        seed: salt of the split hash.
        max_pixels: the largest ``width * height`` of an image or mask file that is decoded.

    Raises:
        UsageError: unknown ``variant`` / ``split`` / ``mask_polarity``, bad ``fractions``.
        DatasetNotFoundError: missing variant or mask folder.
        DatasetFormatError: an image without a mask (names the image), an empty release, a
            class folder that is a symbolic-link loop; when an item is read, an image above
            ``max_pixels`` or undecodable (naming the file).
    """

    has_masks = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        variant: str = "single_6c",
        split: str = "all",
        transform: Callable | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        mask_polarity: str = "dark",
        threshold: int = 128,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 0,
        max_pixels: int = PHOTO_MAX_PIXELS,
    ) -> None:
        super().__init__(root, check_split(split, SPLITS), transform, mask_transform)
        self.variant = check_split(variant.replace("-", "_"), VARIANTS, "variant")
        self.mask_polarity = check_split(mask_polarity, POLARITIES, "mask_polarity")
        if not 0 < threshold <= 255:
            raise UsageError(f"threshold must be in 1..255, got {threshold}")
        self.threshold = int(threshold)
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise UsageError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
        self.fractions, self.seed = fractions, int(seed)
        self.max_pixels = int(max_pixels)

        self.image_root = require_dir(os.path.join(self.root, f"an8Flower_{self.variant}"), "an8Flower image folder")
        self.mask_root = require_dir(os.path.join(self.root, f"an8Flower_{self.variant}_MASK"), "an8Flower mask folder")
        self.classes = sorted(list_subdirs(self.image_root), key=natural_key)
        if not self.classes:
            raise DatasetFormatError(f"{self.image_root}: no class folders")

        #: (image path, mask path, label) of each item.
        self.samples: list[tuple[str, str, int]] = []
        for label, name in enumerate(self.classes):
            images = list_images(os.path.join(self.image_root, name))
            masks = self._mask_names(name)
            if split != "all":
                images = sorted(split_members(images, name, self.fractions, self.seed)[split])
            for image in images:
                mask = masks.get(image) or masks.get(os.path.splitext(image)[0])
                if mask is None:
                    raise DatasetFormatError(
                        f"no mask for image {os.path.join(self.image_root, name, image)} in "
                        f"{os.path.join(self.mask_root, name)}"
                    )
                self.samples.append(
                    (os.path.join(self.image_root, name, image), os.path.join(self.mask_root, name, mask), label)
                )
        if split == "all" and not self.samples:
            raise DatasetFormatError(f"{self.image_root}: no images")
        self.targets = [label for _, _, label in self.samples]

    def _mask_names(self, class_name: str) -> dict[str, str]:
        """Mask file names of a class, keyed by full name and by stem."""
        folder = os.path.join(self.mask_root, class_name)
        names = list_images(folder) if os.path.isdir(folder) else []
        out = {os.path.splitext(n)[0]: n for n in names}
        out.update({n: n for n in names})
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        image_path, mask_path, label = self.samples[index]
        image = load_image(image_path, max_pixels=self.max_pixels)
        grey = np.asarray(load_image(mask_path, mode="L", max_pixels=self.max_pixels))
        if grey.shape != (image.size[1], image.size[0]):
            raise DatasetFormatError(
                f"mask {mask_path} is {grey.shape[1]}x{grey.shape[0]} but image {image_path} is "
                f"{image.size[0]}x{image.size[1]}"
            )
        return self._finish(image, label, mask_from_image(grey, self.mask_polarity, self.threshold))

    def extra_repr(self) -> str:
        lines = [f"Variant: {self.variant}", f"Mask polarity: {self.mask_polarity} (threshold {self.threshold})"]
        if self.split != "all":
            lines.append(f"Split fractions: {self.fractions}, seed {self.seed}")
        return "\n".join(lines)
