"""Fashion144k loader on a tiny release-like folder: photos.txt, photos/, feat/*.mat triplets, split.mat."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from an8flower.datasets.fashion144k import (
    Fashion144k,
    detect_index_base,
    dominant_tag_labels,
    most_frequent_tags,
    read_photos_txt,
    read_sparse_triplets,
    read_split_mat,
    tag_matrix,
)
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

NAMES = ["été_0.jpg", "straße_1.jpg", "東京_2.jpg", "plain_3.jpg", "ñ_4.jpg", "x_5.jpg", "y_6.jpg", "z_7.jpg"]
COLOURS = ["black", "white", "red", "blue"]
# Colour tags of posts 0..7 (presence); see the hand computation in test_hand_computed_labels.
TAGS = {0: [0], 1: [0, 1], 2: [1], 3: [], 4: [2], 5: [0], 6: [1], 7: [0, 2]}
GARMENTS = {0: [3], 1: [3], 2: [0], 3: [0], 4: [1], 5: [2], 6: [2], 7: [2]}
SPLIT = {"trainids": [0, 1, 2, 3, 4, 5], "validids": [6], "testids": [7]}


def triplets(tags: dict[int, list[int]], base: int):
    rows = [p for p, ts in tags.items() for _ in ts]
    cols = [t for ts in tags.values() for t in ts]
    # MATLAB-style double column vectors
    def col(v):
        return np.asarray(v, dtype=np.float64).reshape(-1, 1)

    return {"rows": col(rows) + base, "cols": col(cols) + base, "data": col(np.ones(len(rows)))}


def write_release(root, base=0, split_base=None, prefix="photos/", names=NAMES, tags=TAGS, split=SPLIT) -> str:
    root = os.fspath(root)
    split_base = base if split_base is None else split_base
    os.makedirs(os.path.join(root, "photos"), exist_ok=True)
    os.makedirs(os.path.join(root, "feat"), exist_ok=True)
    with open(os.path.join(root, "photos.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{prefix}{n}\n" for n in names))
    for k, n in enumerate(names):
        rgb = np.full((5, 6, 3), (20 * k) % 256, dtype=np.uint8)
        Image.fromarray(rgb).save(os.path.join(root, "photos", n), "JPEG")
    scipy.io.savemat(os.path.join(root, "feat", "col_cco.mat"), triplets(tags, base))
    scipy.io.savemat(os.path.join(root, "feat", "garflat_cco.mat"), triplets(GARMENTS, base))
    scipy.io.savemat(
        os.path.join(root, "split.mat"),
        {k: np.asarray(v, dtype=np.float64).reshape(-1, 1) + split_base for k, v in split.items()},
    )
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("f144k"))


def load(root, split="train", **kw):
    kw.setdefault("num_classes", 2)
    return Fashion144k(root, split=split, **kw)


# ------------------------------------------------------------------------------- parsers


def test_read_photos_txt_utf8(release, tmp_path):
    assert read_photos_txt(os.path.join(release, "photos.txt")) == ["photos/" + n for n in NAMES]
    bad = tmp_path / "photos.txt"
    bad.write_bytes(b"a.jpg\n" + b"\xff\xfe.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"photos\.txt, line 2: invalid UTF-8"):
        read_photos_txt(bad)
    bad.write_text("a.jpg\n\nb.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"photos\.txt, line 2: blank line"):
        read_photos_txt(bad)
    bad.write_text("\ufeffa.jpg\r\nb.jpg\r\n\r\n", encoding="utf-8")  # BOM and CRLF
    assert read_photos_txt(bad) == ["a.jpg", "b.jpg"]


def test_read_sparse_triplets_and_split(release, tmp_path):
    rows, cols, data = read_sparse_triplets(os.path.join(release, "feat", "col_cco.mat"))
    assert rows.tolist() == [0, 1, 1, 2, 4, 5, 6, 7, 7] and cols.tolist() == [0, 0, 1, 1, 2, 0, 1, 0, 2]
    assert data.dtype == np.float64 and data.sum() == 9
    split = read_split_mat(os.path.join(release, "split.mat"))
    assert split["train"].tolist() == SPLIT["trainids"] and split["val"].tolist() == [6]
    scipy.io.savemat(tmp_path / "short.mat", {"rows": np.arange(3.0), "cols": np.arange(2.0), "data": np.ones(3)})
    with pytest.raises(DatasetFormatError, match=r"short\.mat: mismatched triplet lengths"):
        read_sparse_triplets(tmp_path / "short.mat")
    scipy.io.savemat(tmp_path / "novals.mat", {"rows": np.arange(3.0), "cols": np.arange(3.0)})
    with pytest.raises(DatasetFormatError, match=r"novals\.mat: missing variable\(s\) \['data'\]"):
        read_sparse_triplets(tmp_path / "novals.mat")
    scipy.io.savemat(tmp_path / "frac.mat", {"rows": np.array([0.5]), "cols": np.array([0.0]), "data": np.ones(1)})
    with pytest.raises(DatasetFormatError, match=r"frac\.mat: 'rows' holds non-integer"):
        read_sparse_triplets(tmp_path / "frac.mat")
    scipy.io.savemat(tmp_path / "split.mat", {"trainids": np.arange(3.0), "testids": np.arange(3.0, 5)})
    with pytest.raises(DatasetFormatError, match=r"split\.mat: no ids for split 'val'"):
        read_split_mat(tmp_path / "split.mat")
    scipy.io.savemat(tmp_path / "split.mat", {"trainids": np.arange(3.0), "validids": [2.0], "testids": [4.0]})
    with pytest.raises(DatasetFormatError, match=r"split\.mat: some post ids appear twice"):
        read_split_mat(tmp_path / "split.mat")
    (tmp_path / "garbage.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DatasetFormatError, match=r"garbage\.mat"):
        read_sparse_triplets(tmp_path / "garbage.mat")


def test_detect_index_base():
    assert detect_index_base(np.array([0, 3, 5]), 8) == 0
    assert detect_index_base(np.array([1, 3, 8]), 8) == 1
    assert detect_index_base(np.array([2, 7]), 8) is None
    with pytest.raises(ValueError, match="0..8"):
        detect_index_base(np.array([0, 8]), 8)
    with pytest.raises(ValueError, match="does not fit"):
        detect_index_base(np.array([3, 9]), 8)


def test_rule_functions_by_hand():
    rows, cols = np.array([0, 1, 1, 2, 3]), np.array([0, 0, 1, 1, 2])
    matrix = tag_matrix(rows, cols, np.array([1.0, 2.0, 1.0, 1.0, 1.0]), (4, 4))
    # tags 1 and 2 both in one post of {2, 3}: tie broken by the lower index
    assert most_frequent_tags(matrix, np.array([2, 3]), 2) == [1, 2]
    assert most_frequent_tags(matrix, np.array([0, 1, 2, 3]), 4) == [0, 1, 2]  # tag 3 never occurs
    # post 1 has tag 0 with value 2 and tag 1 with value 1: tag 0 dominates
    assert dominant_tag_labels(matrix, [0, 1]).tolist() == [0, 0, 1, -1]
    assert dominant_tag_labels(matrix, [1, 0]).tolist() == [1, 1, 0, -1]
    tied = tag_matrix(np.array([0, 0]), np.array([0, 1]), np.ones(2), (1, 2))
    assert dominant_tag_labels(tied, [0, 1]).tolist() == [-1]


# ------------------------------------------------------------------------------- dataset


def test_hand_computed_labels(release):
    # train posts 0..5; tag frequency in train: tag0 3 (posts 0, 1, 5), tag1 2 (1, 2), tag2 1 (4):
    # classes [tag0, tag1]. Post 1 has both (tie) and post 3 none, post 4 only tag2: excluded.
    train = load(release, "train", tag_names=COLOURS)
    assert train.class_tags == [0, 1] and train.classes == ["black", "white"]
    assert train.post_ids.tolist() == [0, 2, 5] and train.targets == [0, 1, 0]
    val, test = load(release, "val"), load(release, "test")
    assert val.post_ids.tolist() == [6] and val.targets == [1]
    assert test.post_ids.tolist() == [7] and test.targets == [0]  # tag2 is not a class: tag0 dominant
    assert val.classes == ["colour_0", "colour_1"]  # same class list for every split


def test_items_and_non_ascii_paths(release):
    ds = load(release)
    image, label, mask = ds[1]
    assert ds.image_path(1).endswith(os.path.join("photos", "東京_2.jpg"))  # item 1 is post 2
    assert image.shape == (3, 5, 6) and image.dtype == torch.float32
    assert abs(image.mean().item() - 40 / 255) < 3 / 255  # post 2 was written with grey level 40
    assert label == 1 and mask is None and not ds.has_masks


def test_zero_and_one_based_files_give_the_same_dataset(release, tmp_path):
    one = write_release(tmp_path / "one", base=1)
    mixed = write_release(tmp_path / "mixed", base=1, split_base=0, prefix="")  # images in photos/
    ref = load(release)
    for root in (one, mixed):
        ds = load(root)
        assert ds.post_ids.tolist() == ref.post_ids.tolist() and ds.targets == ref.targets
    assert load(one).split_index_base == 1 and load(one).tag_index_base == 1
    assert load(mixed).split_index_base == 0 and load(mixed).tag_index_base == 1
    assert load(mixed).image_dir == os.path.join(mixed, "photos")


def test_ambiguous_index_base_needs_explicit_argument(tmp_path):
    split = {"trainids": [1, 2, 3, 4, 5], "validids": [6], "testids": [7]}  # neither 0 nor 8
    root = write_release(tmp_path, split=split)
    with pytest.raises(DatasetFormatError, match=r"split\.mat: cannot tell .* pass split_index_base=0 or 1"):
        load(root)
    ds = load(root, split_index_base=0)
    assert ds.post_ids.tolist() == [2, 5]
    # ids 1..5 -> posts 0..4: tags 0 and 1 both in 2 train posts (tie -> [0, 1]); post 1 tied
    assert load(root, split_index_base=1).post_ids.tolist() == [0, 2]
    with pytest.raises(DatasetFormatError, match=r"col_cco\.mat: tag_index_base=1 but the post rows are 0-based"):
        load(root, split_index_base=0, tag_index_base=1)
    with pytest.raises(UsageError, match="split_index_base"):
        load(root, split_index_base=2)


def test_class_rule_is_selectable(release):
    explicit = load(release, class_tags=["red", "white"], tag_names=COLOURS)
    assert explicit.classes == ["red", "white"] and explicit.class_tags == [2, 1]
    assert explicit.post_ids.tolist() == [1, 2, 4] and explicit.targets == [1, 1, 0]
    by_index = load(release, class_tags=[2, 1])
    assert by_index.targets == explicit.targets
    garments = load(release, label_source="garment", num_classes=3)
    # garment tags in train posts: tag0 2 (2, 3), tag3 2 (0, 1), tag1 1, tag2 1 -> [0, 3, 1]
    assert garments.class_tags == [0, 3, 1] and garments.targets == [1, 1, 0, 0, 2]
    with pytest.raises(UsageError, match="unknown tag name 'mauve'"):
        load(release, class_tags=["mauve"], tag_names=COLOURS)
    with pytest.raises(UsageError, match="outside 0..2"):
        load(release, class_tags=[7])
    with pytest.raises(DatasetFormatError, match=r"col_cco\.mat: only 3 tags occur .* num_classes=12"):
        Fashion144k(release)  # the default 12-class rule needs 12 colour tags


def test_default_twelve_classes_match_a_reference(tmp_path):
    rng = np.random.default_rng(3)
    n, n_tags = 60, 15
    tags = {p: sorted(rng.choice(n_tags, size=rng.integers(0, 3), replace=False).tolist()) for p in range(n)}
    names = [f"p{p}.jpg" for p in range(n)]
    split = {"trainids": list(range(45)), "validids": list(range(45, 50)), "testids": list(range(50, 60))}
    root = write_release(tmp_path, names=names, tags=tags, split=split)
    ds = Fashion144k(root, split="test")
    # reference: plain Python counting over the training posts
    counts = {t: sum(t in tags[p] for p in split["trainids"]) for t in range(n_tags)}
    top = sorted((t for t in counts if counts[t]), key=lambda t: (-counts[t], t))[:12]
    assert ds.class_tags == top and len(ds.classes) == 12
    expected = [(p, top.index(hit[0])) for p in split["testids"] for hit in [[t for t in tags[p] if t in top]] if len(hit) == 1]
    assert list(zip(ds.post_ids.tolist(), ds.targets, strict=True)) == expected


def test_mismatched_counts_name_files(tmp_path):
    root = write_release(tmp_path / "a", names=NAMES[:6])  # photos.txt: 6 posts, files mention 8
    with pytest.raises(DatasetFormatError, match=r"split\.mat: split ids: .*photos\.txt lists 6 posts"):
        load(root)
    split = {"trainids": [0, 1, 2], "validids": [3, 4], "testids": [5]}
    root = write_release(tmp_path / "b", names=NAMES[:6], split=split)
    with pytest.raises(DatasetFormatError, match=r"col_cco\.mat: post rows: ids range 0..7 .*photos\.txt lists 6 posts"):
        load(root)


def test_missing_files_and_bad_arguments(release, tmp_path):
    root = write_release(tmp_path)
    os.remove(os.path.join(root, "feat", "col_cco.mat"))
    with pytest.raises(DatasetNotFoundError, match=r"col_cco\.mat"):
        load(root)
    os.remove(os.path.join(root, "split.mat"))
    with pytest.raises(DatasetNotFoundError, match=r"split\.mat"):
        load(root)
    with pytest.raises(DatasetNotFoundError, match=r"photos\.txt"):
        load(tmp_path / "empty")
    os.remove(os.path.join(root, "photos", NAMES[0]))
    with pytest.raises(DatasetNotFoundError, match="été_0.jpg"):
        load(root)
    with pytest.raises(UsageError, match=r"split 'valid'.*'train', 'val', 'test'"):
        load(release, "valid")
    with pytest.raises(UsageError, match=r"label_source 'pattern'"):
        load(release, label_source="pattern")


def test_unreadable_image_names_file(tmp_path):
    root = write_release(tmp_path)
    with open(os.path.join(root, "photos", NAMES[2]), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 broken")
    ds = load(root)
    with pytest.raises(DatasetFormatError, match="東京_2.jpg"):
        ds[1]
