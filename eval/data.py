"""Datasets the leaderboard scores, held in memory: an8Flower rendered or read, ILSVRC12 validation.

:func:`prepare_an8flower` and :func:`prepare_imagenet` turn a variant (or a generated folder) and
an ILSVRC12 root into a :class:`PreparedData`: its splits as uint8 :class:`TensorSplit` tensors, its
hash (the cache's dataset key) and what the report needs to know of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig

__all__ = ["TensorSplit", "materialise", "PreparedData", "prepare_an8flower", "prepare_imagenet", "check_memory",
           "imagenet_transforms"]

#: Bytes a rendered sample takes in a :class:`TensorSplit`, per pixel: RGB, mask, part map.
BYTES_PER_PIXEL = 5
#: Share of the machine's memory the rendered splits of one variant may take.
MEMORY_SHARE = 0.5


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def check_memory(variant: str, num_classes: int, config: RunConfig, need_train: bool = True,
                 memory: int | None = None) -> int:
    """Refuse, before anything is rendered or written, a run whose splits cannot fit in memory.

    The runner holds the rendered splits in memory as uint8 tensors, ``5 * size**2`` bytes per
    sample (:data:`BYTES_PER_PIXEL`); with training, every split (``K * per_class`` samples), else
    the scored split alone. Returns the estimate in bytes.

    Raises:
        UsageError: the estimate exceeds :data:`MEMORY_SHARE` of ``memory`` (default: this machine's
            physical memory), naming the variant, the estimate and the settings to change.
    """
    from an8flower.layout import split_sizes

    n = config.per_class_for(variant)
    per_class = n if need_train else split_sizes(n)[config.split]
    estimate = num_classes * per_class * config.size * config.size * BYTES_PER_PIXEL
    memory = _physical_memory() if memory is None else memory
    if memory is not None and estimate > MEMORY_SHARE * memory:
        raise UsageError(
            f"{variant}: per_class {n} at {config.size} px needs about {estimate / 2**30:,.1f} GiB in "
            f"memory for the rendered {'splits' if need_train else config.split + ' split'} (this machine has "
            f"{memory / 2**30:,.1f} GiB); lower per_class or size"
        )
    return estimate


class TensorSplit(Dataset):
    """A split held in memory: uint8 images (N, C, H, W), labels, masks and part maps.

    Items are ``(image float32 (C, H, W) in [0, 1], label, mask)`` as every dataset of the package
    yields them, so a split trains a model or fits VEBI through an ordinary ``DataLoader``.

    Attributes:
        images: uint8 (N, C, H, W). labels: long (N,). masks: bool (N, H, W) or None.
        parts: uint8 (N, H, W) or None. ids: the sample index of each item in its source.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None,
                 parts: torch.Tensor | None, ids: Sequence[int]) -> None:
        self.images, self.labels, self.masks, self.parts = images, labels, masks, parts
        self.ids = [int(i) for i in ids]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        return self.images[i].float().div_(255.0), int(self.labels[i]), None if self.masks is None else self.masks[i]

    def float_images(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Images ``index`` as float32 in [0, 1]."""
        return self.images[index].float().div_(255.0)

    def select(self, index: torch.Tensor, device: torch.device | None = None) -> TensorSplit:
        """The items ``index`` (a long tensor of positions), in that order, as a split on ``device``.

        The leaderboard moves the scored images of a group to the model's device once, so that
        explainers and metrics then run without a host copy per batch.
        """
        index = torch.as_tensor(index, dtype=torch.long)
        pick = (lambda t: None if t is None else t[index].to(device)) if device is not None else (
            lambda t: None if t is None else t[index])
        return TensorSplit(cast(torch.Tensor, pick(self.images)), cast(torch.Tensor, pick(self.labels)),
                           pick(self.masks), pick(self.parts), [self.ids[i] for i in index.tolist()])

    def sha256(self) -> str:
        """SHA-256 of the split's bytes (images, labels, masks, part maps, ids)."""
        d = hashlib.sha256()
        for t in (self.images, self.labels, self.masks, self.parts):
            if t is not None:
                d.update(f"{t.dtype}{tuple(t.shape)}".encode())
                d.update(t.contiguous().numpy().tobytes())
        d.update(json.dumps(self.ids).encode())
        return d.hexdigest()


def _raw_item(item: Sequence[Any]) -> tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]:
    image = item[0]
    image = image if image.dtype == torch.uint8 else image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    mask = item[2] if len(item) > 2 else None
    parts = item[3] if len(item) > 3 else None
    return image, int(item[1]), mask, parts


def _collate_raw(batch: Sequence[Sequence[Any]]) -> list:
    return [_raw_item(b) for b in batch]


def materialise(dataset: Dataset, workers: int = 0, desc: str = "load", progress: bool | None = None) -> TensorSplit:
    """Read every item of ``dataset`` into a :class:`TensorSplit` (images stored as uint8).

    Items are ``(image float in [0, 1], label, mask[, parts])``; images are assumed to be 8-bit
    (an8Flower PNGs, JPEGs) so the uint8 round trip is exact. ``ids`` come from the dataset's
    ``sample_index`` when it has one.
    """
    from tqdm.auto import tqdm

    sized = cast(Sized, dataset)  # torch's Dataset does not declare __len__; a map-style one has it
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=_collate_raw)
    images, labels, masks, parts = [], [], [], []
    with tqdm(total=len(sized), desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
        for batch in loader:
            for image, label, mask, part in batch:
                images.append(image)
                labels.append(label)
                masks.append(mask)
                parts.append(part)
            bar.update(len(batch))
    if not images:
        raise UsageError(f"{desc}: the dataset is empty")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise UsageError(f"{desc}: images of different sizes {sorted(shapes)[:2]}; resize them with a transform")
    ids = [dataset.sample_index(i) for i in range(len(sized))] if hasattr(dataset, "sample_index") else list(range(len(sized)))
    return TensorSplit(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.long),
        torch.stack(masks).bool() if all(m is not None for m in masks) else None,
        torch.stack(parts).to(torch.uint8) if all(p is not None for p in parts) else None,
        ids,
    )


@dataclass
class PreparedData:
    """A dataset ready to score: splits in memory and what the report needs to know of it.

    Attributes:
        dataset: ``"an8flower"`` or ``"ilsvrc12"``. variant: the variant name (``""`` for ILSVRC12).
        source: ``"rendered in memory"`` or the folder read. hash: the dataset hash (the manifest
        SHA-256 of a generated folder; the SHA-256 of the rendered splits' bytes otherwise).
        classes, parts, discriminative: class names, part names and the discriminative parts.
        train, val: the training splits (None when the model is loaded, not trained). test: the
        scored split. size: image side. info: facts recorded in ``run.json``. spec, seed: the
        an8Flower variant (at ``size``) and dataset seed the images are renders of (None for other
        datasets): the counterfactual re-renders of model reliance (:mod:`an8flower.eval.reliance`)
        need them, with each image's sample index (``test.ids``).
    """

    dataset: str
    variant: str
    source: str
    hash: str
    classes: list[str]
    parts: list[str]
    discriminative: list[str]
    train: TensorSplit | None
    val: TensorSplit | None
    test: TensorSplit
    size: int
    info: dict[str, Any] = field(default_factory=dict)
    spec: Any | None = None
    seed: int | None = None


def prepare_an8flower(variant: str, config: RunConfig, need_train: bool = True, progress: bool | None = None) -> PreparedData:
    """Load (``config.data[variant]``, a generated folder) or render in memory an an8Flower variant.

    Rendered in memory, the splits are exactly those ``an8flower generate VARIANT --size SIZE
    --per-class PER_CLASS --seed SEED`` writes. Read from a folder, the dataset's hash (part of
    every cell's cache key) is its manifest's SHA-256, so every file is read with ``verify=True``:
    its bytes are checked against the manifest's SHA-256 as they are read, and a file that differs
    (a PNG replaced, the manifest left alone) is refused, naming it, rather than scored under the
    manifest's hash (stale cells).

    Raises:
        DatasetFormatError: a file whose bytes differ from the manifest's hash, naming the file.
    """
    from an8flower.datasets.generated import An8Flower, An8FlowerOnTheFly

    folder = config.data.get(variant)
    splits = ["train", "val", config.split] if need_train else [config.split]
    splits = list(dict.fromkeys(splits))
    loaded: dict[str, TensorSplit] = {}
    if folder is not None:
        for split in splits:
            ds = An8Flower(folder, split, return_parts=True, verify=True)
            loaded[split] = materialise(ds, config.workers, f"{variant} {split}", progress)
        info = ds.info
        name = info.get("variant", variant)
        digest = info.get("manifest_sha256") or info.get("manifest_hash")
        if not digest:
            raise UsageError(f"{folder}: dataset.json has no manifest_sha256")
        classes, parts, disc = list(ds.classes), list(ds.parts), list(ds.discriminative_parts)
        source, size = os.fspath(folder), int(loaded[config.split].images.shape[-1])
        facts = {"seed": info.get("seed"), "per_class": info.get("per_class"), "version": info.get("version")}
        spec, seed = _folder_spec(info, size), info.get("seed")
    else:
        for split in splits:
            rendered = An8FlowerOnTheFly(variant, split, size=config.size, per_class=config.per_class_for(variant),
                                         seed=config.seed, return_parts=True)
            loaded[split] = materialise(rendered, config.workers, f"render {rendered.spec.name} {split}", progress)
        spec = rendered.spec
        name, classes, parts, disc = spec.name, list(spec.classes), list(spec.parts), list(spec.discriminative)
        d = hashlib.sha256()
        for split in splits:
            d.update(split.encode() + loaded[split].sha256().encode())
        digest, source, size = d.hexdigest(), "rendered in memory", config.size
        facts = {"seed": config.seed, "per_class": config.per_class_for(variant), "spec_sha256": spec.sha256()}
        seed = config.seed
    facts["sizes"] = {s: len(t) for s, t in loaded.items()}
    return PreparedData(
        dataset="an8flower", variant=name, source=source, hash=digest, classes=classes, parts=parts,
        discriminative=disc, train=loaded.get("train"), val=loaded.get("val"), test=loaded[config.split],
        size=size, info=facts, spec=spec, seed=seed,
    )


def _folder_spec(info: dict[str, Any], size: int) -> Any | None:
    """The spec a generated folder was rendered from (``dataset.json``), at its image size; None if
    ``dataset.json`` holds none that this version can read."""
    from an8flower.errors import SpecError
    from an8flower.spec import VariantSpec

    try:
        return VariantSpec.from_dict(info["spec"]).with_size(size)
    except (KeyError, SpecError, UsageError):
        return None


def imagenet_transforms(size: int) -> tuple[Any, Any]:
    """The ILSVRC12 image and mask transforms of :func:`prepare_imagenet` for a crop of ``size`` pixels."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    resize = round(size * 256 / 224)

    def transform(img: Any) -> torch.Tensor:
        return F.to_tensor(F.center_crop(F.resize(img, resize, InterpolationMode.BILINEAR), size))

    def mask_transform(mask: torch.Tensor) -> torch.Tensor:
        m = F.resize(mask[None].to(torch.uint8), resize, InterpolationMode.NEAREST)
        return F.center_crop(m, size)[0].bool()

    return transform, mask_transform


def prepare_imagenet(config: RunConfig, progress: bool | None = None) -> PreparedData:
    """ILSVRC12 validation images resized to 256 (shorter side), centre-cropped to ``config.size``
    (224 unless set), with the union of the labelled class's boxes as mask (same transform,
    nearest-neighbour)."""
    from an8flower.datasets.imagenet import ILSVRC12

    size = config.size
    transform, mask_transform = imagenet_transforms(size)
    ds = ILSVRC12(config.imagenet, "val", transform=transform, mask_transform=mask_transform, num_classes=None)
    n = len(ds) if config.max_images is None else min(len(ds), 4 * config.max_images)
    subset = torch.utils.data.Subset(ds, range(n))
    test = materialise(subset, config.workers, "ILSVRC12 val", progress)
    if test.masks is None:
        raise UsageError(f"{config.imagenet}: no validation boxes found (XML annotations or LOC_val_solution.csv)")
    digest = hashlib.sha256(("ilsvrc12-val" + test.sha256()).encode()).hexdigest()
    return PreparedData(
        dataset="ilsvrc12", variant="", source=os.fspath(config.imagenet), hash=digest, classes=list(ds.classes),
        parts=[], discriminative=[], train=None, val=None, test=test, size=size,
        info={"images_read": n, "val_images": len(ds), "class_source": getattr(ds, "class_source", None)},
    )
