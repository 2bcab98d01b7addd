"""The base every dataset of the package derives from.

The contract (after torchvision's ``VisionDataset``): a dataset has a ``root``, a ``split``, an
optional ``transform`` applied to the image, ``classes`` (class names, index = label) and
``has_masks``. Item ``i`` is ``(image, label, mask)``:

* ``image``: a float32 tensor (C, H, W) in [0, 1] when ``transform`` is None (C = 3, or 1 for
  grey datasets such as MNIST), else whatever the transform returns when given a
  ``PIL.Image.Image`` (RGB, or "L" for grey datasets);
* ``label``: an ``int`` class index;
* ``mask``: a bool tensor (H, W) of the localisation ground truth at the image's native
  resolution, or ``None`` where the dataset has none. ``mask_transform`` (if given) receives that
  bool tensor and must return one aligned with the transformed image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

Item = tuple[Any, int, torch.Tensor | None]


def to_image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 (or HxW) array -> float32 tensor (C, H, W) in [0, 1]."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class ExplanationDataset(Dataset):
    """Base class: ``root``, ``split``, ``transform``, ``classes``, ``has_masks``, uniform repr."""

    #: Whether items carry a localisation mask (``None`` otherwise).
    has_masks: bool = False
    #: Class names, index = label.
    classes: Sequence[str] = ()

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[Any], Any] | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.split = split
        self.transform = transform
        self.mask_transform = mask_transform

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _finish(self, image: Any, label: int, mask: np.ndarray | torch.Tensor | None) -> Item:
        """Apply ``transform``/``mask_transform``; ``image`` is a PIL image or a uint8 HxWx3 array."""
        if mask is not None and not isinstance(mask, torch.Tensor):
            mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
        if self.transform is not None:
            if isinstance(image, np.ndarray):
                from PIL import Image

                image = Image.fromarray(image)
            image = self.transform(image)
        else:
            if not isinstance(image, np.ndarray):
                image = np.asarray(image.convert("RGB"))
            image = to_image_tensor(image)
        if mask is not None and self.mask_transform is not None:
            mask = self.mask_transform(mask)
        return image, int(label), mask

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [
            f"Number of datapoints: {len(self)}",
            f"Root location: {self.root}",
            f"Split: {self.split}",
            f"Classes: {self.num_classes}",
            f"Masks: {self.has_masks}",
        ]
        extra = self.extra_repr()
        if extra:
            lines += extra.splitlines()
        if self.transform is not None:
            lines.append(f"Transform: {self.transform!r}")
        return f"{type(self).__name__}\n" + "\n".join("    " + line for line in lines)


def collate_with_masks(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``DataLoader`` collate function for ``(image, label, mask)`` items.

    Stacks images and labels; masks are stacked when every item has one and ``None`` otherwise
    (PyTorch's default collate cannot stack ``None``).
    """
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    masks = [b[2] for b in batch if b[2] is not None]
    if len(masks) < len(batch):
        return images, labels, None
    return images, labels, torch.stack(masks)
