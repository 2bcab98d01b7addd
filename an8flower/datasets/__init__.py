"""Datasets: the generated an8Flower and loaders of the paper's other datasets in their real formats.

Every dataset yields ``(image, label, mask)`` (see :mod:`an8flower.datasets.base`).
"""

from an8flower.datasets.base import ExplanationDataset, collate_with_masks
from an8flower.datasets.fashion144k import (
    Fashion144k,
    read_photos_txt,
    read_sparse_triplets,
    read_split_mat,
)
from an8flower.datasets.generated import An8Flower, An8FlowerOnTheFly, resize_sample
from an8flower.datasets.imagenet import (
    ILSVRC12,
    Box,
    Synset,
    boxes_to_mask,
    parse_meta_mat,
    parse_voc_xml,
    read_loc_synset_mapping,
    read_loc_val_solution,
    read_val_ground_truth,
)
from an8flower.datasets.mnist import MNIST, FashionMNIST, read_idx
from an8flower.datasets.original import An8FlowerOriginal

__all__ = [
    "An8Flower",
    "An8FlowerOnTheFly",
    "An8FlowerOriginal",
    "Box",
    "ExplanationDataset",
    "Fashion144k",
    "FashionMNIST",
    "ILSVRC12",
    "MNIST",
    "Synset",
    "boxes_to_mask",
    "collate_with_masks",
    "parse_meta_mat",
    "parse_voc_xml",
    "read_idx",
    "read_loc_synset_mapping",
    "read_loc_val_solution",
    "read_photos_txt",
    "read_sparse_triplets",
    "read_split_mat",
    "read_val_ground_truth",
    "resize_sample",
]
