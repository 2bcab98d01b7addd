"""Loader of the original an8Flower release on a tiny folder in its layout (dark-on-light masks)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from an8flower.datasets.original import An8FlowerOriginal, mask_from_image, split_members
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

# Hand-drawn 6 x 8 mask image: '#' = 30 (dark: relevant), '+' = 127 (just dark), '-' = 128 (just
# light), '.' = 230 (background).
MASK_TEXT = """
........
...###..
..+###-.
...###..
........
........
"""
LEVELS = {"#": 30, "+": 127, "-": 128, ".": 230}
RELEVANT = np.array([[c in "#+" for c in row] for row in MASK_TEXT.strip().splitlines()])


def write_release(root, variant="single_6c", n_classes=6, per_class=2, mask_ext=".png") -> str:
    root = os.fspath(root)
    grey = np.array([[LEVELS[c] for c in row] for row in MASK_TEXT.strip().splitlines()], dtype=np.uint8)
    for c in range(1, n_classes + 1):
        images = os.path.join(root, f"an8Flower_{variant}", f"class{c}")
        masks = os.path.join(root, f"an8Flower_{variant}_MASK", f"class{c}")
        os.makedirs(images, exist_ok=True)
        os.makedirs(masks, exist_ok=True)
        for i in range(1, per_class + 1):
            name = f"class{c}_img{i}_p0_r0"
            Image.fromarray(np.full((6, 8, 3), 10 * c, dtype=np.uint8)).save(os.path.join(images, name + ".png"))
            Image.fromarray(grey).save(os.path.join(masks, name + mask_ext))
    return root


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("orig"), per_class=10)


def test_classes_in_natural_order_with_labels(tmp_path):
    root = write_release(tmp_path, variant="double_12c", n_classes=12, per_class=1)
    ds = An8FlowerOriginal(root, variant="double-12c")
    assert ds.classes == [f"class{c}" for c in range(1, 13)]  # class2 before class10
    assert len(ds) == 12 and ds.targets == list(range(12))
    for path, _, label in ds.samples:
        assert os.path.basename(os.path.dirname(path)) == ds.classes[label]
    image, label, mask = ds[9]
    assert label == 9 and image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert torch.allclose(image, torch.full((3, 6, 8), 100 / 255))  # class10 was filled with 100


def test_dark_mask_is_relevant_threshold_128(single):
    ds = An8FlowerOriginal(single, "single_6c")
    _, _, mask = ds[0]
    assert mask.dtype == torch.bool and mask.shape == (6, 8)
    np.testing.assert_array_equal(mask.numpy(), RELEVANT)
    light = An8FlowerOriginal(single, "single_6c", mask_polarity="light")
    np.testing.assert_array_equal(light[0][2].numpy(), ~RELEVANT)
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert mask_from_image(grey).tolist() == [[True, True, False, False]]
    assert mask_from_image(grey, "dark", threshold=200).tolist() == [[True, True, True, False]]


def test_masks_matched_by_name_or_stem(tmp_path):
    same = An8FlowerOriginal(write_release(tmp_path / "same", mask_ext=".png"))
    other = An8FlowerOriginal(write_release(tmp_path / "other", mask_ext=".bmp"))
    assert [m for _, m, _ in same.samples][0].endswith("class1_img1_p0_r0.png")
    assert [m for _, m, _ in other.samples][0].endswith("class1_img1_p0_r0.bmp")
    assert torch.equal(same[3][2], other[3][2])


def test_missing_mask_names_the_image(tmp_path):
    root = write_release(tmp_path)
    os.remove(os.path.join(root, "an8Flower_single_6c_MASK", "class4", "class4_img2_p0_r0.png"))
    with pytest.raises(DatasetFormatError, match=r"no mask for image .*class4_img2_p0_r0\.png"):
        An8FlowerOriginal(root)


def test_mask_of_another_size_names_both(tmp_path):
    root = write_release(tmp_path)
    path = os.path.join(root, "an8Flower_single_6c_MASK", "class2", "class2_img1_p0_r0.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(path)
    ds = An8FlowerOriginal(root)
    with pytest.raises(DatasetFormatError, match=r"mask .*class2_img1_p0_r0\.png is 3x3 but image .* is 8x6"):
        ds[2]


def test_deterministic_stratified_split(single):
    parts = {s: An8FlowerOriginal(single, split=s) for s in ("train", "val", "test")}
    everything = An8FlowerOriginal(single, split="all")
    names = {s: {p for p, _, _ in ds.samples} for s, ds in parts.items()}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])
    assert names["train"] | names["val"] | names["test"] == {p for p, _, _ in everything.samples}
    for label in range(6):  # 10 per class: 7 / 1 / 2
        assert [parts[s].targets.count(label) for s in ("train", "val", "test")] == [7, 1, 2]
    again = An8FlowerOriginal(single, split="train")
    assert again.samples == parts["train"].samples
    other_seed = An8FlowerOriginal(single, split="train", seed=1)
    assert {p for p, _, _ in other_seed.samples} != names["train"]
    halves = An8FlowerOriginal(single, split="val", fractions=(0.5, 0.5, 0.0))
    assert len(halves) == 30 and len(An8FlowerOriginal(single, split="test", fractions=(0.5, 0.5, 0.0))) == 0


def test_split_members_ignore_listing_order():
    names = [f"img{i}.png" for i in range(20)]
    shuffled = names[:]
    random.Random(4).shuffle(shuffled)
    assert split_members(names, "c", (0.6, 0.2, 0.2), 0) == split_members(shuffled, "c", (0.6, 0.2, 0.2), 0)
    parts = split_members(names, "c", (0.6, 0.2, 0.2), 0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    assert split_members(names, "other-class", (0.6, 0.2, 0.2), 0) != parts  # salted by class


def test_bad_arguments_and_missing_folders(single, tmp_path):
    with pytest.raises(UsageError, match=r"variant 'triple_18c'"):
        An8FlowerOriginal(single, "triple_18c")
    with pytest.raises(UsageError, match=r"split 'validation'.*'all', 'train', 'val', 'test'"):
        An8FlowerOriginal(single, split="validation")
    with pytest.raises(UsageError, match=r"mask_polarity 'bright'"):
        An8FlowerOriginal(single, mask_polarity="bright")
    with pytest.raises(UsageError, match="fractions"):
        An8FlowerOriginal(single, split="train", fractions=(0.8, 0.3, 0.0))
    with pytest.raises(DatasetNotFoundError, match=r"an8Flower_double_12c"):
        An8FlowerOriginal(single, "double_12c")
    root = write_release(tmp_path)
    os.rename(os.path.join(root, "an8Flower_single_6c_MASK"), os.path.join(root, "masks"))
    with pytest.raises(DatasetNotFoundError, match=r"an8Flower_single_6c_MASK"):
        An8FlowerOriginal(root)


def test_repr(single):
    text = repr(An8FlowerOriginal(single, split="train"))
    assert "An8FlowerOriginal" in text and "Masks: True" in text and "Variant: single_6c" in text
