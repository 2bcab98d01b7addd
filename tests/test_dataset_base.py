"""The dataset base class and the (image, label, mask) collate function."""

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset, collate_with_masks, to_image_tensor


class Two(ExplanationDataset):
    classes = ("a", "b")
    has_masks = True

    def __len__(self):
        return 2

    def __getitem__(self, i):
        image = np.full((2, 3, 3), 255 * i, dtype=np.uint8)
        mask = np.zeros((2, 3), dtype=bool)
        mask[0, i] = True
        return self._finish(image, i, mask)


def test_finish_converts_to_unit_float_chw():
    image, label, mask = Two("/nowhere", "train")[1]
    assert image.shape == (3, 2, 3) and image.dtype == torch.float32
    assert torch.all(image == 1.0) and label == 1
    assert mask.dtype == torch.bool and mask.tolist() == [[False, True, False], [False, False, False]]


def test_transforms_apply_to_pil_and_mask():
    ds = Two("/nowhere", "train", transform=lambda im: im.size, mask_transform=lambda m: m.T)
    size, _, mask = ds[0]
    assert size == (3, 2)  # PIL size is (W, H)
    assert mask.shape == (3, 2)


def test_to_image_tensor_grey():
    t = to_image_tensor(np.array([[0, 255]], dtype=np.uint8))
    assert t.shape == (1, 1, 2) and t.tolist() == [[[0.0, 1.0]]]


def test_collate_stacks_masks_or_gives_none():
    ds = Two("/nowhere", "train")
    images, labels, masks = collate_with_masks([ds[0], ds[1]])
    assert images.shape == (2, 3, 2, 3) and labels.tolist() == [0, 1] and masks.shape == (2, 2, 3)
    _, _, none = collate_with_masks([ds[0], (ds[1][0], 1, None)])
    assert none is None


def test_repr_is_uniform():
    text = repr(Two("/data/x", "val"))
    assert text.splitlines()[0] == "Two"
    assert "Root location: /data/x" in text and "Split: val" in text and "Classes: 2" in text
