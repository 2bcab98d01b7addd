"""The torch datasets: a generated folder and the same split rendered on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from an8flower.datasets.base import collate_with_masks
from an8flower.datasets.generated import An8Flower, An8FlowerOnTheFly
from an8flower.errors import DatasetNotFoundError, UsageError
from an8flower.generate import generate
from an8flower.layout import split_sizes
from an8flower.manifest import DATASET_JSON
from an8flower.render import render
from an8flower.spec import load_spec

PER_CLASS = 5  # 3 / 1 / 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gd") / "d12"
    generate("double-12c", root, size=64, per_class=PER_CLASS, seed=7, workers=1, progress=False)
    return root


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_folder_and_on_the_fly_yield_identical_items(folder, split):
    disk = An8Flower(folder, split, return_parts=True)
    fly = An8FlowerOnTheFly("double-12c", split, size=64, per_class=PER_CLASS, seed=7, return_parts=True)
    assert len(disk) == len(fly) == 12 * split_sizes(PER_CLASS)[split]
    assert disk.classes == fly.classes == load_spec("double-12c").classes
    assert disk.targets == fly.targets
    for i in range(len(disk)):
        a, b = disk[i], fly[i]
        assert a[0].dtype == torch.float32 and a[0].shape == (3, 64, 64)
        assert 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0
        assert a[2].dtype == torch.bool and a[3].dtype == torch.uint8
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
        assert disk.sample_index(i) == fly.sample_index(i)
        assert disk.meta(i) == fly.meta(i)


def test_items_are_the_renderers_samples(folder):
    spec = load_spec("double-12c").with_size(64)
    ds = An8Flower(folder, "val")
    for i in (0, 5, len(ds) - 1):
        sample = render(spec, 7, ds.sample_index(i))
        image, label, mask = ds[i]
        expected = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0
        assert torch.equal(image, expected)
        assert label == sample.label == ds.sample_index(i) % 12
        assert torch.equal(mask, torch.from_numpy(sample.mask))


def test_part_map_agrees_with_mask(folder):
    ds = An8Flower(folder, "test")
    disc = torch.tensor([ds.parts.index(p) for p in ds.discriminative_parts])
    assert ds.discriminative_parts == ("centre", "leaves")
    for i in range(len(ds)):
        _, _, mask = ds[i]
        parts = ds.part_map(i)
        assert parts.shape == mask.shape
        assert torch.equal(torch.isin(parts, disc), mask)


def test_samples_are_image_folder_style(folder):
    ds = An8Flower(folder, "train")
    for (path, label), idx in zip(ds.samples, (ds.sample_index(i) for i in range(len(ds))), strict=True):
        p = Path(path)
        assert p.is_file() and p.parent.name == f"{label:02d}-{ds.classes[label]}" and p.parent.parent.name == "train"
        assert p.name == f"{idx:06d}.png"
    assert [ds.sample_index(i) for i in range(len(ds))] == sorted(ds.sample_index(i) for i in range(len(ds)))


def test_transforms_are_applied(folder):
    seen = []

    def transform(img):
        seen.append(img.mode)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)

    ds = An8Flower(folder, "val", transform=transform, mask_transform=lambda m: m[::2, ::2])
    image, label, mask = ds[0]
    assert seen == ["RGB"] and image.dtype == torch.uint8
    plain = An8Flower(folder, "val")[0]
    assert torch.equal(image.float() / 255.0, plain[0])
    assert torch.equal(mask, plain[2][::2, ::2])


def test_data_loader_batches(folder):
    ds = An8FlowerOnTheFly("double-12c", "val", size=64, per_class=PER_CLASS, seed=7)
    images, labels, masks = next(iter(DataLoader(ds, batch_size=12, collate_fn=collate_with_masks)))
    assert images.shape == (12, 3, 64, 64) and masks.shape == (12, 64, 64)
    assert labels.tolist() == list(range(12))  # the val split starts at ordinal 3: one of each class in order


def test_missing_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        An8Flower(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}.*{DATASET_JSON} is missing"):
        An8Flower(tmp_path)


def test_unfinished_generation_is_named(tmp_path):
    root = tmp_path / "half"
    generate("single-6c", root, size=64, per_class=3, seed=0, workers=1, shard="1/2", progress=False)
    with pytest.raises(DatasetNotFoundError, match="unfinished generation"):
        An8Flower(root)


def test_bad_split_and_variant(folder):
    with pytest.raises(UsageError, match="split 'training'"):
        An8Flower(folder, "training")
    with pytest.raises(UsageError, match="split 'dev'"):
        An8FlowerOnTheFly("single-6c", "dev")
    from an8flower.errors import SpecError

    with pytest.raises(SpecError, match="unknown variant"):
        An8FlowerOnTheFly("triple-99c")


def test_on_the_fly_default_size_is_the_papers_scale():
    ds = An8FlowerOnTheFly("single-6c", "test")
    assert len(ds) == 6 * 200 and ds.spec.size == 224
    assert ds.sample_index(0) == 6 * 800
