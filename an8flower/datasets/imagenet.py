"""ILSVRC12 (ImageNet-1k) from the official or the Kaggle on-disk layout, with box masks.

Layouts read (``root`` is the folder the user points to):

* official: ``train/<wnid>/*.JPEG``; ``val/<wnid>/*.JPEG`` or flat ``val/ILSVRC2012_val_*.JPEG``;
  the devkit ``ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}``;
  validation boxes as PASCAL-VOC-style XML in ``ILSVRC2012_bbox_val_v3/val/``, ``bbox_val/``
  (or ``bbox_val/val/``) or next to the images in ``val/``;
* Kaggle: ``ILSVRC/Data/CLS-LOC/{train,val}``, ``ILSVRC/Annotations/CLS-LOC/val/*.xml``,
  ``LOC_synset_mapping.txt`` and ``LOC_val_solution.csv`` in ``root``.

**Class index** = position of the wnid in the sorted list of wnids (what torchvision's
``ImageFolder`` and every pretrained model use). The devkit's ground-truth file holds 1-based
``ILSVRC2012_ID`` values of ``meta.mat``, NOT class indices: the loader maps id -> wnid -> sorted
position (the first validation image has id 490 = n01751748, class index 65).

**Masks** (validation only): the union of the boxes of the labelled class, at the image's native
resolution. Box coordinates are read as **0-based, inclusive pixel indices**: pixel (row ``y``,
column ``x``) is inside when ``xmin <= x <= xmax`` and ``ymin <= y <= ymax``. (A decision: PASCAL
VOC's boxes are 1-based, widely used ImageNet loaders treat ImageNet's as 0-based and clip ``xmax``
to ``width - 1``; the ILSVRC documentation we consulted does not state the origin. The two
readings differ by a one-pixel shift.)
Non-integer coordinates are rounded to the nearest pixel; boxes are clipped to the image. When
the image on disk is not the size the XML records (a pre-resized copy), the boxes are scaled:
the box covers the continuous span ``[xmin, xmax + 1)``, scaled by ``W_image / W_xml``, and then
every pixel that span touches.

The paper (Oramas et al., ICLR 2019) explains ILSVRC12 classifiers (VGG-F and other pretrained
models) and uses the validation boxes for localisation.
"""

from __future__ import annotations

import csv
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from an8flower.datasets.base import ExplanationDataset, Item
from an8flower.datasets.files import (
    PHOTO_MAX_PIXELS,
    check_split,
    is_readable_image,
    list_images,
    list_subdirs,
    load_image,
    require_dir,
)
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

__all__ = [
    "ILSVRC12",
    "Synset",
    "Box",
    "parse_meta_mat",
    "leaf_synsets",
    "read_val_ground_truth",
    "read_loc_synset_mapping",
    "read_loc_val_solution",
    "parse_voc_xml",
    "scale_boxes",
    "boxes_to_mask",
]

SPLITS = ("train", "val")
VAL_LABEL_SOURCES = ("auto", "folders", "devkit", "loc_csv")
BOX_SOURCES = ("auto", "xml", "loc_csv", "none")

DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META_MAT = os.path.join("data", "meta.mat")
GROUND_TRUTH_TXT = os.path.join("data", "ILSVRC2012_validation_ground_truth.txt")
LOC_SYNSET_MAPPING = "LOC_synset_mapping.txt"
LOC_VAL_SOLUTION = "LOC_val_solution.csv"
KAGGLE_DATA = os.path.join("ILSVRC", "Data", "CLS-LOC")
KAGGLE_VAL_XML = os.path.join("ILSVRC", "Annotations", "CLS-LOC", "val")

_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d+)$")
_WNID = re.compile(r"^n\d{8}$")


class Synset(NamedTuple):
    """One entry of the devkit's ``meta.mat`` ``synsets`` struct array."""

    ilsvrc_id: int
    wnid: str
    words: str
    num_children: int


class Box(NamedTuple):
    """A labelled box: wnid and 0-based inclusive pixel coordinates."""

    wnid: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


# ----------------------------------------------------------------------------------- parsers


def parse_meta_mat(path: str | os.PathLike[str]) -> list[Synset]:
    """Read the ``synsets`` struct array of the devkit's ``meta.mat``.

    Args:
        path: ``ILSVRC2012_devkit_t12/data/meta.mat``.

    Returns:
        Every synset in file order (leaves and internal nodes). The leaf classes are those with
        ``num_children == 0`` (see :func:`leaf_synsets`).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: not a MATLAB file, no ``synsets`` variable, a missing field
            (``ILSVRC2012_ID``, ``WNID``, ``words``, ``num_children``) or a malformed value.
    """
    from scipy.io import loadmat

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"devkit meta.mat not found: {path}")
    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3)...
        raise DatasetFormatError(f"cannot read MATLAB file {path}: {exc}") from exc
    if "synsets" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(f"{path}: no 'synsets' variable (found: {found})")
    synsets = np.atleast_1d(mat["synsets"])
    names = synsets.dtype.names or ()
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "words", "num_children") if f not in names]
    if missing:
        raise DatasetFormatError(f"{path}: 'synsets' lacks field(s) {missing} (has {list(names)})")
    out: list[Synset] = []
    for i, rec in enumerate(synsets):
        try:
            out.append(Synset(int(rec["ILSVRC2012_ID"]), str(rec["WNID"]), str(rec["words"]),
                              int(rec["num_children"])))
        except (TypeError, ValueError) as exc:
            raise DatasetFormatError(f"{path}: malformed synset entry {i + 1}: {exc}") from exc
    return out


def leaf_synsets(synsets: Sequence[Synset], path: str = "meta.mat") -> list[Synset]:
    """The classification classes of ``synsets``: entries with ``num_children == 0``.

    Checks that their ids are positive and unique and their wnids unique (a full devkit has 1000
    leaves with ids 1..1000; a subset devkit, as in tests, may hold any unique ids).

    Raises:
        DatasetFormatError: no leaf, a non-positive or repeated id, a repeated wnid (names ``path``).
    """
    leaves = [s for s in synsets if s.num_children == 0]
    if not leaves:
        raise DatasetFormatError(f"{path}: no leaf synset (num_children == 0)")
    ids = [s.ilsvrc_id for s in leaves]
    if min(ids) < 1 or len(set(ids)) != len(ids):
        raise DatasetFormatError(f"{path}: leaf ILSVRC2012_IDs must be unique positive integers")
    wnids = [s.wnid for s in leaves]
    if len(set(wnids)) != len(wnids):
        raise DatasetFormatError(f"{path}: repeated WNID among the leaf synsets")
    return leaves


def read_val_ground_truth(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``ILSVRC2012_validation_ground_truth.txt``: one 1-based ILSVRC2012_ID per line.

    Line ``n`` is the id of ``ILSVRC2012_val_<n, 8 digits>.JPEG``. The ids are those of
    ``meta.mat``, not class indices.

    Returns:
        int64 array of the ids, in line order (trailing blank lines ignored).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: a line that is not a positive integer (message names file and line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"validation ground truth not found: {path}")
    with open(path, encoding="ascii", errors="replace") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    ids = np.empty(len(lines), dtype=np.int64)
    for k, line in enumerate(lines):
        text = line.strip()
        if not text.isdigit() or int(text) < 1:
            raise DatasetFormatError(f"{path}, line {k + 1}: expected a positive integer id, got {line!r}")
        ids[k] = int(text)
    return ids


def read_loc_synset_mapping(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read Kaggle's ``LOC_synset_mapping.txt``: lines ``<wnid> <names, comma separated>``.

    Returns:
        ``(wnid, names)`` pairs in file order.

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: a line not starting with a wnid (``n`` + 8 digits), or a repeated wnid.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"synset mapping not found: {path}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            wnid, _, names = line.partition(" ")
            if not _WNID.match(wnid):
                raise DatasetFormatError(f"{path}, line {k + 1}: expected '<wnid> <names>', got {line!r}")
            if wnid in seen:
                raise DatasetFormatError(f"{path}, line {k + 1}: repeated wnid {wnid}")
            seen.add(wnid)
            out.append((wnid, names.strip()))
    if not out:
        raise DatasetFormatError(f"{path}: no synset lines")
    return out


def read_loc_val_solution(path: str | os.PathLike[str]) -> dict[str, list[Box]]:
    """Read Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` rows.

    ``PredictionString`` repeats ``<wnid> <xmin> <ymin> <xmax> <ymax>``; rows are in no
    particular order.

    Returns:
        ImageId (file stem, e.g. ``ILSVRC2012_val_00000001``) -> boxes in the row's order.

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: wrong header, a token count not a multiple of five, a coordinate that
            is not a finite number (``nan``, ``inf``), a repeated ImageId (message names file and line).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"LOC validation solution not found: {path}")
    out: dict[str, list[Box]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DatasetFormatError(f"{path}, line 1: expected header 'ImageId,PredictionString', got {header}")
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DatasetFormatError(f"{path}, line {line}: expected 2 columns, got {len(row)}")
            image_id, tokens = row[0].strip(), row[1].split()
            if not tokens or len(tokens) % 5:
                raise DatasetFormatError(
                    f"{path}, line {line}: PredictionString must hold groups of 5 tokens, got {len(tokens)}"
                )
            if image_id in out:
                raise DatasetFormatError(f"{path}, line {line}: repeated ImageId {image_id}")
            what = f"{path}, line {line}: box coordinate"
            boxes = [Box(tokens[j], *(_finite(t, what) for t in tokens[j + 1 : j + 5]))
                     for j in range(0, len(tokens), 5)]
            out[image_id] = boxes
    return out


#: Largest magnitude of an XML size or box coordinate: beyond any image side (PNG's limit is
#: 2**31 - 1, JPEG's 65,535), and small enough that rescaling a box to another image size
#: (:func:`scale_boxes`) stays finite.
MAX_COORDINATE = 2.0**31


def _xml_number(node: ET.Element, tag: str, path: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DatasetFormatError(f"{path}: <{node.tag}> lacks <{tag}>")
    value = _finite(child.text, f"{path}: <{tag}>")
    if abs(value) > MAX_COORDINATE:
        raise DatasetFormatError(f"{path}: <{tag}> {child.text.strip()[:40]} is larger than any image side "
                                 f"(at most 2**31)")
    return value


def _finite(text: str, what: str) -> float:
    """``float(text)``, refusing what is not a finite number (``inf``, ``nan``, ``1e999``)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise DatasetFormatError(f"{what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise DatasetFormatError(f"{what} is not a finite number: {text!r}")
    return value


def parse_voc_xml(path: str | os.PathLike[str]) -> tuple[tuple[int, int] | None, list[Box]]:
    """Parse one PASCAL-VOC-style annotation file of ImageNet.

    Returns:
        ``(size, boxes)``: ``size`` is ``(width, height)`` from ``<size>`` (None when absent);
        ``boxes`` one :class:`Box` per ``<object>`` (its ``<name>`` and ``<bndbox>``).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: not well-formed XML, root not ``<annotation>``, an object without
            name or bndbox, a size or coordinate that is not a finite number (``nan``, ``inf``)
            or is larger than any image side (:data:`MAX_COORDINATE`, so that rescaling stays
            finite), a non-positive size (message names the file and the field).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"box annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetFormatError(f"broken XML in {path}: {exc}") from exc
    if root.tag != "annotation":
        raise DatasetFormatError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = None
    size_node = root.find("size")
    if size_node is not None:
        size = (int(_xml_number(size_node, "width", path)), int(_xml_number(size_node, "height", path)))
        if size[0] <= 0 or size[1] <= 0:
            raise DatasetFormatError(f"{path}: non-positive <size> {size}")
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name")
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            raise DatasetFormatError(f"{path}: <object> without <name> or <bndbox>")
        boxes.append(Box(name.strip(), *(_xml_number(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return size, boxes


def scale_boxes(boxes: Sequence[Box], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[Box]:
    """Rescale inclusive pixel boxes annotated on a ``from_size`` (W, H) image to ``to_size``.

    The box ``[xmin, xmax]`` covers the continuous span ``[xmin, xmax + 1)``; it is scaled by
    ``to_W / from_W`` and mapped back to the inclusive pixel range it touches:
    ``floor(xmin * s) .. ceil((xmax + 1) * s) - 1`` (same for y).
    """
    if tuple(from_size) == tuple(to_size):
        return list(boxes)
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return [
        Box(b.wnid, math.floor(b.xmin * sx), math.floor(b.ymin * sy),
            math.ceil((b.xmax + 1) * sx) - 1, math.ceil((b.ymax + 1) * sy) - 1)
        for b in boxes
    ]


def boxes_to_mask(boxes: Sequence[Box | Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of boxes as a bool (height, width) mask.

    Args:
        boxes: (N, 4) ``xmin, ymin, xmax, ymax``, 0-based inclusive pixel indices (a :class:`Box`
            sequence works too: its wnid is ignored). Rounded to the nearest pixel, clipped to the
            image; a box entirely outside, or with ``xmax < xmin``, covers nothing.
        height, width: mask size.

    Returns:
        ``mask[y, x] = any_i (xmin_i <= x <= xmax_i and ymin_i <= y <= ymax_i)``.
    """
    coords = np.array([tuple(b)[-4:] for b in boxes], dtype=np.float64).reshape(-1, 4)
    coords = np.floor(coords + 0.5)
    xs, ys = np.arange(width), np.arange(height)
    in_x = (xs[None, :] >= coords[:, 0:1]) & (xs[None, :] <= coords[:, 2:3])  # (N, W)
    in_y = (ys[None, :] >= coords[:, 1:2]) & (ys[None, :] <= coords[:, 3:4])  # (N, H)
    # (H, N) @ (N, W): a pixel is inside the union when some box holds both its row and column.
    return (in_y.T.astype(np.int32) @ in_x.astype(np.int32)) > 0


# ----------------------------------------------------------------------------------- dataset


class ILSVRC12(ExplanationDataset):
    """ILSVRC12 (ImageNet-1k) classification images with the validation boxes as masks.

    Items are ``(image, label, mask)``: ``image`` float32 (3, H, W) in [0, 1] at native
    resolution (or ``transform(PIL RGB image)``); ``label`` the sorted-wnid position; ``mask``
    (validation, when boxes are available) the bool (H, W) union of the boxes of the labelled
    class at native resolution (see the module docstring for the pixel convention), else None.
    The index is built from folder listings and the label files only; images are decoded in
    ``__getitem__`` (unless ``skip_broken``).

    Args:
        root: the folder holding ``train/`` and ``val/`` (+ the devkit), or the Kaggle folder
            holding ``ILSVRC/`` and the ``LOC_*`` files.
        split: ``"train"`` or ``"val"``.
        transform: applied to the PIL RGB image.
        mask_transform: applied to the bool mask tensor (keep it aligned with ``transform``).
        val_labels: where flat validation images get their labels: ``"auto"`` (wnid sub-folders
            if ``val/`` has them, else the devkit, else ``LOC_val_solution.csv``), ``"folders"``,
            ``"devkit"`` or ``"loc_csv"``.
        boxes: the validation box source: ``"auto"`` (XML folder if found, else
            ``LOC_val_solution.csv``, else no masks), ``"xml"``, ``"loc_csv"`` or ``"none"``.
        devkit: the ``ILSVRC2012_devkit_t12`` folder (default ``root/ILSVRC2012_devkit_t12``).
        annotations: the folder of validation XML files (default: searched, see module docs).
        num_classes: the number of classes the class list must hold (1000 for ILSVRC12); None
            skips the check (a subset install, or test fixtures). The class list comes from
            ``meta.mat`` (leaf synsets), else ``LOC_synset_mapping.txt``, else the ``train/``
            (or ``val/``) wnid folders.
        skip_broken: decode every image once at construction and drop the unreadable ones
            (listed in ``self.skipped``); slow on the full set. When False (default) an
            unreadable image raises :class:`DatasetFormatError` naming it when it is loaded.
        max_pixels: the largest ``width * height`` decoded (default
            :data:`an8flower.untrusted.PHOTO_MAX_PIXELS`, 40 Mpx; checked from the header before
            decoding, so a decompression bomb is refused naming the file).

    Raises:
        UsageError: unknown ``split``, ``val_labels`` or ``boxes``.
        DatasetNotFoundError / DatasetFormatError: missing or malformed files, naming them.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        val_labels: str = "auto",
        boxes: str = "auto",
        devkit: str | os.PathLike[str] | None = None,
        annotations: str | os.PathLike[str] | None = None,
        num_classes: int | None = 1000,
        skip_broken: bool = False,
        max_pixels: int = PHOTO_MAX_PIXELS,
    ) -> None:
        super().__init__(root, check_split(split, SPLITS), transform, mask_transform)
        self.max_pixels = int(max_pixels)
        self.val_labels = check_split(val_labels, VAL_LABEL_SOURCES, "val_labels")
        check_split(boxes, BOX_SOURCES, "boxes")
        self.kaggle = os.path.isdir(os.path.join(self.root, KAGGLE_DATA))
        data_root = os.path.join(self.root, KAGGLE_DATA) if self.kaggle else self.root
        self.devkit = os.fspath(devkit) if devkit is not None else os.path.join(self.root, DEVKIT_DIR)
        self.meta_file = os.path.join(self.devkit, META_MAT)
        self.ground_truth_file = os.path.join(self.devkit, GROUND_TRUTH_TXT)
        self.loc_mapping_file = os.path.join(self.root, LOC_SYNSET_MAPPING)
        self.loc_solution_file = os.path.join(self.root, LOC_VAL_SOLUTION)
        self.images_dir = require_dir(os.path.join(data_root, split), f"ILSVRC12 {split} folder")

        self._synsets: list[Synset] | None = None
        self.wnids, self.classes, self.class_source = self._class_list(data_root)
        if num_classes is not None and len(self.wnids) != num_classes:
            raise DatasetFormatError(
                f"{self.class_source}: {len(self.wnids)} classes, expected {num_classes} "
                f"(pass num_classes={len(self.wnids)} or None to use a subset)"
            )
        self.class_to_idx = {w: i for i, w in enumerate(self.wnids)}

        self._loc_solution: dict[str, list[Box]] | None = None
        self.label_source = "folders"
        if split == "train" or list_subdirs(self.images_dir):
            if split == "val" and val_labels in ("devkit", "loc_csv"):
                raise UsageError(
                    f"val_labels={val_labels!r} labels flat validation images, but {self.images_dir} "
                    f"has <wnid> sub-folders; use val_labels='auto' or 'folders'"
                )
            self.samples = self._index_folders()
        else:
            self.samples = self._index_flat_val()
        if not self.samples:
            raise DatasetFormatError(f"no images found in {self.images_dir}")

        self.box_source = "none"
        self.annotations_dir: str | None = None
        if split == "val" and boxes != "none":
            self._choose_boxes(boxes, annotations)
        self.has_masks = self.box_source != "none"

        self.skipped: list[str] = []
        if skip_broken:
            kept: list[tuple[str, int]] = []
            broken: list[tuple[str, int]] = []
            for path, label in tqdm(self.samples, desc="checking images", disable=None):
                (kept if is_readable_image(path, self.max_pixels) else broken).append((path, label))
            self.skipped = [p for p, _ in broken]
            self.samples = kept
        self.targets = [label for _, label in self.samples]

    # -- class list -------------------------------------------------------------------------

    def _class_list(self, data_root: str) -> tuple[list[str], list[str], str]:
        meta = os.path.isfile(self.meta_file)
        mapping = os.path.isfile(self.loc_mapping_file)
        if meta:
            self._synsets = parse_meta_mat(self.meta_file)
            leaves = sorted(leaf_synsets(self._synsets, self.meta_file), key=lambda s: s.wnid)
            wnids, names, source = [s.wnid for s in leaves], [s.words for s in leaves], self.meta_file
            if mapping:
                other = sorted(w for w, _ in read_loc_synset_mapping(self.loc_mapping_file))
                if other != wnids:
                    raise DatasetFormatError(
                        f"{self.meta_file} and {self.loc_mapping_file} list different wnids "
                        f"({len(wnids)} vs {len(other)})"
                    )
            return wnids, names, source
        if mapping:
            pairs = sorted(read_loc_synset_mapping(self.loc_mapping_file))
            return [w for w, _ in pairs], [n or w for w, n in pairs], self.loc_mapping_file
        for split in ("train", "val"):
            folder = os.path.join(data_root, split)
            if os.path.isdir(folder) and list_subdirs(folder):
                wnids = list_subdirs(folder)
                return wnids, list(wnids), folder
        raise DatasetNotFoundError(
            f"no ILSVRC12 class list under {self.root}: expected {self.meta_file}, "
            f"{self.loc_mapping_file} or train/<wnid>/ folders"
        )

    # -- index ------------------------------------------------------------------------------

    def _index_folders(self) -> list[tuple[str, int]]:
        samples = []
        for wnid in list_subdirs(self.images_dir):
            folder = os.path.join(self.images_dir, wnid)
            if wnid not in self.class_to_idx:
                raise DatasetFormatError(f"folder {folder} is not a class of {self.class_source}")
            label = self.class_to_idx[wnid]
            samples += [(os.path.join(folder, name), label) for name in list_images(folder)]
        return samples

    def _flat_val_images(self) -> list[tuple[str, str, int]]:
        """(path, stem, image number) of the flat validation images, by file name."""
        out = []
        for name in list_images(self.images_dir):
            stem = os.path.splitext(name)[0]
            m = _VAL_NAME.match(stem)
            if m is None:
                raise DatasetFormatError(
                    f"{os.path.join(self.images_dir, name)}: a flat validation image must be named "
                    f"ILSVRC2012_val_<number>.JPEG to be labelled"
                )
            out.append((os.path.join(self.images_dir, name), stem, int(m.group(1))))
        return out

    def _index_flat_val(self) -> list[tuple[str, int]]:
        source = self.val_labels
        if source == "folders":
            raise DatasetFormatError(f"{self.images_dir} has no <wnid> sub-folders (val_labels='folders')")
        if source == "auto":
            if os.path.isfile(self.ground_truth_file) and os.path.isfile(self.meta_file):
                source = "devkit"
            elif os.path.isfile(self.loc_solution_file):
                source = "loc_csv"
            else:
                raise DatasetNotFoundError(
                    f"flat validation images in {self.images_dir} need labels: expected "
                    f"{self.ground_truth_file} with {self.meta_file}, or {self.loc_solution_file}"
                )
        images = self._flat_val_images()
        self.label_source = source
        if source == "devkit":
            return self._label_by_devkit(images)
        return self._label_by_loc_csv(images)

    def _label_by_devkit(self, images: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
        ids = read_val_ground_truth(self.ground_truth_file)
        if self._synsets is None:
            self._synsets = parse_meta_mat(self.meta_file)
        id_to_wnid = {s.ilsvrc_id: s.wnid for s in leaf_synsets(self._synsets, self.meta_file)}
        samples = []
        for path, _, number in images:
            if not 1 <= number <= len(ids):
                raise DatasetFormatError(
                    f"{path}: image number {number} has no line in {self.ground_truth_file} ({len(ids)} lines)"
                )
            ilsvrc_id = int(ids[number - 1])
            wnid = id_to_wnid.get(ilsvrc_id)
            if wnid is None:
                raise DatasetFormatError(
                    f"{self.ground_truth_file}, line {number}: id {ilsvrc_id} is not a leaf synset of {self.meta_file}"
                )
            if wnid not in self.class_to_idx:
                raise DatasetFormatError(f"{self.ground_truth_file}, line {number}: {wnid} is not a class of {self.class_source}")
            samples.append((path, self.class_to_idx[wnid]))
        return samples

    def _loc(self) -> dict[str, list[Box]]:
        if self._loc_solution is None:
            self._loc_solution = read_loc_val_solution(self.loc_solution_file)
        return self._loc_solution

    def _label_by_loc_csv(self, images: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
        solution = self._loc()
        samples = []
        for path, stem, _ in images:
            boxes = solution.get(stem)
            if boxes is None:
                raise DatasetFormatError(f"{self.loc_solution_file} has no row for image {path}")
            wnid = boxes[0].wnid
            if wnid not in self.class_to_idx:
                raise DatasetFormatError(f"{self.loc_solution_file}: {wnid} of {stem} is not a class of {self.class_source}")
            samples.append((path, self.class_to_idx[wnid]))
        return samples

    # -- boxes ------------------------------------------------------------------------------

    def _choose_boxes(self, boxes: str, annotations: str | os.PathLike[str] | None) -> None:
        if annotations is not None:
            candidates = [os.fspath(annotations)]
        else:
            candidates = [
                os.path.join(self.root, KAGGLE_VAL_XML),
                os.path.join(self.root, "ILSVRC2012_bbox_val_v3", "val"),
                os.path.join(self.root, "bbox_val", "val"),
                os.path.join(self.root, "bbox_val"),
            ]
        xml_dir = next((d for d in candidates if os.path.isdir(d) and _has_xml(d)), None)
        if xml_dir is None and annotations is None and _has_xml(self.images_dir):
            xml_dir = self.images_dir
        if boxes in ("auto", "xml") and xml_dir is not None:
            self.box_source, self.annotations_dir = "xml", xml_dir
        elif boxes in ("auto", "loc_csv") and os.path.isfile(self.loc_solution_file):
            self.box_source = "loc_csv"
            self._loc()
        elif boxes == "xml":
            raise DatasetNotFoundError(f"no validation XML files in any of: {', '.join(candidates)}")
        elif boxes == "loc_csv":
            raise DatasetNotFoundError(f"LOC validation solution not found: {self.loc_solution_file}")

    def boxes_for(self, index: int, image_size: tuple[int, int] | None = None) -> list[Box]:
        """Boxes of the labelled class of item ``index``, in pixels of an image of ``image_size``.

        ``image_size`` (W, H) is the size of the image on disk; XML boxes are rescaled when it
        differs from the XML's ``<size>`` (see :func:`scale_boxes`). Empty when the box source has
        no box of that class for the image.
        """
        path, label = self.samples[index]
        stem = os.path.splitext(os.path.basename(path))[0]
        wnid = self.wnids[label]
        if self.annotations_dir is not None:  # set exactly when box_source == "xml"
            size, found = parse_voc_xml(os.path.join(self.annotations_dir, stem + ".xml"))
            found = [b for b in found if b.wnid == wnid]
            if size is not None and image_size is not None:
                found = scale_boxes(found, size, image_size)
            return found
        if self.box_source == "loc_csv":
            rows = self._loc().get(stem)
            if rows is None:
                raise DatasetFormatError(f"{self.loc_solution_file} has no row for image {path}")
            return [b for b in rows if b.wnid == wnid]
        return []

    # -- dataset protocol -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        path, label = self.samples[index]
        image = load_image(path, max_pixels=self.max_pixels)
        mask = None
        if self.has_masks:
            width, height = image.size
            mask = boxes_to_mask(self.boxes_for(index, (width, height)), height, width)
        return self._finish(image, label, mask)

    def extra_repr(self) -> str:
        lines = [f"Layout: {'kaggle' if self.kaggle else 'official'}", f"Class list: {self.class_source}",
                 f"Labels: {self.label_source}", f"Boxes: {self.box_source}"]
        if self.skipped:
            lines.append(f"Skipped unreadable images: {len(self.skipped)}")
        return "\n".join(lines)


def _has_xml(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(".xml") for e in entries)
