"""ILSVRC12 loader on a tiny devkit / XML / LOC fixture written in the real formats."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from an8flower.datasets.imagenet import (
    ILSVRC12,
    Box,
    boxes_to_mask,
    leaf_synsets,
    parse_meta_mat,
    parse_voc_xml,
    read_loc_synset_mapping,
    read_loc_val_solution,
    read_val_ground_truth,
    scale_boxes,
)
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError

SEA_SNAKE = "n01751748"
# (ILSVRC2012_ID, wnid, words): id order differs from sorted-wnid order on purpose.
LEAVES = [
    (1, "n03000001", "tench-like thing"),
    (2, "n01000002", "goldfish-like thing"),
    (3, "n09999999", "last thing"),
    (490, SEA_SNAKE, "sea snake"),
]
SORTED = sorted(w for _, w, _ in LEAVES)  # n01000002, n01751748, n03000001, n09999999
# Validation images 1..4: (ground-truth id, size (W, H)).
VAL = {1: (490, (10, 8)), 2: (3, (12, 9)), 3: (1, (9, 11)), 4: (2, (8, 8))}
FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]


def write_meta_mat(path, leaves, internal=((1001, "n00001740", "entity"),)) -> None:
    """A devkit ``meta.mat``: struct array ``synsets`` (N x 1) with the real field names."""
    entries = [(i, w, words, 0, np.zeros((1, 0), np.uint16)) for i, w, words in leaves]
    children = np.array([[i for i, _, _ in leaves]], dtype=np.uint16)
    entries += [(i, w, words, children.size, children) for i, w, words in internal]
    synsets = np.zeros((len(entries), 1), dtype=[(f, "O") for f in FIELDS])
    for k, (i, wnid, words, n_children, kids) in enumerate(entries):
        rec = synsets[k, 0]
        rec["ILSVRC2012_ID"] = np.array([[i]], dtype=np.uint16)
        rec["WNID"], rec["words"], rec["gloss"] = wnid, words, f"gloss of {wnid}"
        rec["num_children"] = np.array([[n_children]], dtype=np.uint16)
        rec["children"] = kids
        rec["wordnet_height"] = np.array([[0 if n_children == 0 else 1]], dtype=np.uint8)
        rec["num_train_images"] = np.array([[1300 if n_children == 0 else 0]], dtype=np.uint16)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})


def write_jpeg(path, size, seed=0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, "JPEG")


def voc_xml(stem, size, objects) -> str:
    objs = "".join(
        f"<object><name>{w}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for w, b in objects
    )
    return (f"<annotation><folder>val</folder><filename>{stem}</filename><source><database>ILSVRC_2012</database>"
            f"</source><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


# Boxes per validation image: the labelled class's boxes plus, for image 1, a box of another class.
BOXES = {
    1: [(SEA_SNAKE, (1, 1, 3, 2)), (SEA_SNAKE, (2, 2, 4, 5)), ("n03000001", (6, 0, 9, 7))],
    2: [("n09999999", (0, 0, 11, 8))],
    3: [("n03000001", (5, 7, 20, 20))],  # reaches past the 9 x 11 image: clipped
    4: [("n01000002", (3, 3, 3, 3))],
}
# Hand-drawn union of image 1's sea-snake boxes (rows 0..7, columns 0..9).
MASK_1 = """
..........
.###......
.####.....
..###.....
..###.....
..###.....
..........
..........
"""


def grid(text: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in text.strip().splitlines()])


def write_official(root, flat_val=True, xml=True, loc=True, devkit=True) -> str:
    root = os.fspath(root)
    for k, (_, wnid, _) in enumerate(LEAVES[:3]):
        for j in range(2):
            write_jpeg(os.path.join(root, "train", wnid, f"{wnid}_{j}.JPEG"), (6 + j, 5), seed=10 * k + j)
    for n, (gt, size) in VAL.items():
        stem = f"ILSVRC2012_val_{n:08d}"
        wnid = dict((i, w) for i, w, _ in LEAVES)[gt]
        folder = os.path.join(root, "val") if flat_val else os.path.join(root, "val", wnid)
        write_jpeg(os.path.join(folder, stem + ".JPEG"), size, seed=100 + n)
        if xml:
            path = os.path.join(root, "ILSVRC2012_bbox_val_v3", "val", stem + ".xml")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(voc_xml(stem, size, BOXES[n]))
    if devkit:
        data = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
        write_meta_mat(os.path.join(data, "meta.mat"), LEAVES)
        with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
            f.write("".join(f"{VAL[n][0]}\n" for n in sorted(VAL)) + "3\n")  # one line more than images
    if loc:
        write_loc(root)
    return root


def write_loc(root) -> None:
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w") as f:
        f.write("".join(f"{w} {words}\n" for w, words in sorted((w, words) for _, w, words in LEAVES)))
    with open(os.path.join(root, "LOC_val_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\n")
        for n in (3, 1, 4, 2):  # rows not sorted, as in the real file
            tokens = " ".join(f"{w} {b[0]} {b[1]} {b[2]} {b[3]}" for w, b in BOXES[n])
            f.write(f"ILSVRC2012_val_{n:08d},{tokens} \n")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("ilsvrc"))


def val_set(root, **kw):
    return ILSVRC12(root, split="val", num_classes=None, **kw)


# ------------------------------------------------------------------------------- parsers


def test_parse_meta_mat_reads_struct_array(official):
    synsets = parse_meta_mat(os.path.join(official, "ILSVRC2012_devkit_t12", "data", "meta.mat"))
    assert [(s.ilsvrc_id, s.wnid, s.words) for s in synsets[:4]] == LEAVES
    assert synsets[4].wnid == "n00001740" and synsets[4].num_children == 4
    assert [s.wnid for s in leaf_synsets(synsets)] == [w for _, w, _ in LEAVES]


def test_parse_meta_mat_errors_name_file(tmp_path):
    scipy.io.savemat(tmp_path / "nosyn.mat", {"other": np.zeros(3)})
    with pytest.raises(DatasetFormatError, match=r"nosyn\.mat: no 'synsets'"):
        parse_meta_mat(tmp_path / "nosyn.mat")
    (tmp_path / "junk.mat").write_bytes(b"this is not a MATLAB file at all" * 8)
    with pytest.raises(DatasetFormatError, match=r"junk\.mat"):
        parse_meta_mat(tmp_path / "junk.mat")
    with pytest.raises(DatasetNotFoundError, match=r"absent\.mat"):
        parse_meta_mat(tmp_path / "absent.mat")
    write_meta_mat(str(tmp_path / "dup" / "meta.mat"), [(1, "n1", "a"), (1, "n2", "b")])
    with pytest.raises(DatasetFormatError, match=r"meta\.mat: leaf ILSVRC2012_IDs must be unique"):
        leaf_synsets(parse_meta_mat(tmp_path / "dup" / "meta.mat"), str(tmp_path / "dup" / "meta.mat"))


def test_read_val_ground_truth(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("490\n361\n171\n\n")
    assert read_val_ground_truth(path).tolist() == [490, 361, 171]
    path.write_text("490\n36x\n")
    with pytest.raises(DatasetFormatError, match=r"gt\.txt, line 2"):
        read_val_ground_truth(path)


def test_loc_files(official, tmp_path):
    mapping = read_loc_synset_mapping(os.path.join(official, "LOC_synset_mapping.txt"))
    assert mapping[1] == (SEA_SNAKE, "sea snake")
    solution = read_loc_val_solution(os.path.join(official, "LOC_val_solution.csv"))
    assert solution["ILSVRC2012_val_00000001"][1] == Box(SEA_SNAKE, 2, 2, 4, 5)
    assert len(solution) == 4
    bad = tmp_path / "LOC_val_solution.csv"
    bad.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution\.csv, line 2: .*groups of 5"):
        read_loc_val_solution(bad)
    bad.write_text("Id,Prediction\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution\.csv, line 1"):
        read_loc_val_solution(bad)
    (tmp_path / "map.txt").write_text("n01440764 tench\nbogus line\n")
    with pytest.raises(DatasetFormatError, match=r"map\.txt, line 2"):
        read_loc_synset_mapping(tmp_path / "map.txt")


def test_parse_voc_xml_and_broken_xml(official, tmp_path):
    size, boxes = parse_voc_xml(os.path.join(official, "ILSVRC2012_bbox_val_v3", "val", "ILSVRC2012_val_00000001.xml"))
    assert size == (10, 8)
    assert boxes == [Box(SEA_SNAKE, 1, 1, 3, 2), Box(SEA_SNAKE, 2, 2, 4, 5), Box("n03000001", 6, 0, 9, 7)]
    broken = tmp_path / "ILSVRC2012_val_00000009.xml"
    broken.write_text("<annotation><size><width>3</width>")
    with pytest.raises(DatasetFormatError, match=r"broken XML in .*ILSVRC2012_val_00000009\.xml"):
        parse_voc_xml(broken)
    broken.write_text("<annotation><object><name>n1</name></object></annotation>")
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_val_00000009\.xml: <object> without"):
        parse_voc_xml(broken)
    broken.write_text("<annotation><object><name>n1</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_val_00000009\.xml: <xmin> is not a number"):
        parse_voc_xml(broken)


def test_boxes_to_mask_inclusive_zero_based_and_clipped():
    mask = boxes_to_mask([(0, 0, 0, 0), (2, 1, 3, 1)], height=3, width=5)
    expected = np.zeros((3, 5), bool)
    expected[0, 0] = True
    expected[1, 2:4] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(boxes_to_mask([(-5, -5, 100, 1)], 3, 4), [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert not boxes_to_mask([(10, 10, 20, 20), (3, 0, 1, 2)], 4, 4).any()  # outside / inverted
    assert boxes_to_mask([], 2, 3).shape == (2, 3)
    np.testing.assert_array_equal(boxes_to_mask([(0.6, 0.4, 1.4, 0.6)], 2, 3), [[0, 1, 0], [0, 1, 0]])


def test_scale_boxes_to_resized_image():
    # 10 x 8 annotated, image stored at 20 x 16: pixel 1..3 covers [1, 4) -> [2, 8) -> 2..7.
    assert scale_boxes([Box("n", 1, 1, 3, 2)], (10, 8), (20, 16)) == [Box("n", 2, 2, 7, 5)]
    assert scale_boxes([Box("n", 1, 1, 3, 2)], (10, 8), (10, 8)) == [Box("n", 1, 1, 3, 2)]


# ------------------------------------------------------------------------------- dataset


def test_imagenet_trap_id_490_maps_to_sorted_position(official):
    ds = val_set(official)
    assert ds.label_source == "devkit"
    assert ds.wnids == SORTED
    label = ds.targets[0]  # ILSVRC2012_val_00000001: devkit id 490
    assert label == SORTED.index(SEA_SNAKE) == 1
    assert label not in (489, 490, 3)  # not id-1, not id, not the position in id order
    assert ds.classes[label] == "sea snake"
    # every image: id -> wnid -> sorted position
    id_to_wnid = {i: w for i, w, _ in LEAVES}
    assert ds.targets == [SORTED.index(id_to_wnid[VAL[n][0]]) for n in sorted(VAL)]


def test_imagenet_trap_full_1000_class_devkit(tmp_path):
    # 65 wnids sort before n01751748 and 934 after; ids are shuffled; the sea snake has id 490.
    wnids = [f"n0100{i:04d}" for i in range(65)] + [SEA_SNAKE] + [f"n0200{i:04d}" for i in range(934)]
    ids = np.random.default_rng(0).permutation(np.setdiff1d(np.arange(1, 1001), [490]))
    leaves = [(int(i), w, w) for i, w in zip(ids, wnids[:65] + wnids[66:], strict=True)] + [(490, SEA_SNAKE, "sea snake")]
    write_meta_mat(str(tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat"), leaves)
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n")
    write_jpeg(str(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"), (4, 4))
    ds = ILSVRC12(tmp_path, split="val")  # default num_classes=1000 holds
    assert ds.targets == [65] and ds.wnids[65] == SEA_SNAKE and len(ds.classes) == 1000


def test_val_labelling_routes_agree(official):
    devkit = val_set(official, val_labels="devkit")
    loc = val_set(official, val_labels="loc_csv")
    assert loc.label_source == "loc_csv"
    assert devkit.targets == loc.targets and len(devkit) == 4
    assert [p for p, _ in devkit.samples] == [p for p, _ in loc.samples]


def test_val_folder_layout(tmp_path):
    root = write_official(tmp_path, flat_val=False, devkit=False)
    ds = val_set(root)
    assert ds.label_source == "folders" and ds.class_source.endswith("LOC_synset_mapping.txt")
    by_stem = {os.path.basename(p)[:-5]: label for p, label in ds.samples}
    id_to_wnid = {i: w for i, w, _ in LEAVES}
    assert by_stem == {f"ILSVRC2012_val_{n:08d}": SORTED.index(id_to_wnid[VAL[n][0]]) for n in VAL}
    assert ds.has_masks and ds[0][2] is not None
    with pytest.raises(UsageError, match="val_labels='devkit'"):
        val_set(root, val_labels="devkit")


def test_box_union_mask_hand_checked(official):
    ds = val_set(official)
    assert ds.has_masks and ds.box_source == "xml"
    image, label, mask = ds[0]
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert mask.dtype == torch.bool and mask.shape == (8, 10)
    np.testing.assert_array_equal(mask.numpy(), grid(MASK_1))  # the n03000001 box is not included
    clipped = ds[2][2]  # box 5..20 x 7..20 on a 9 x 11 image
    expected = np.zeros((11, 9), bool)
    expected[7:, 5:] = True
    np.testing.assert_array_equal(clipped.numpy(), expected)
    assert ds[3][2].sum().item() == 1 and ds[3][2][3, 3]


def test_loc_csv_boxes_equal_xml_boxes(official):
    xml = val_set(official, boxes="xml")
    loc = val_set(official, boxes="loc_csv")
    assert loc.box_source == "loc_csv"
    for i in range(len(xml)):
        assert torch.equal(xml[i][2], loc[i][2])
    assert val_set(official, boxes="none")[0][2] is None


def test_masks_follow_pre_resized_images(tmp_path):
    root = write_official(tmp_path)
    write_jpeg(os.path.join(root, "val", "ILSVRC2012_val_00000001.JPEG"), (20, 16))  # XML says 10 x 8
    _, _, mask = val_set(root)[0]
    expected = np.kron(grid(MASK_1), np.ones((2, 2), bool))  # exact 2x upsampling of the union
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_kaggle_layout_matches_official(official, tmp_path):
    root = str(tmp_path)
    data = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    for n, (_, size) in VAL.items():
        stem = f"ILSVRC2012_val_{n:08d}"
        write_jpeg(os.path.join(data, "val", stem + ".JPEG"), size, seed=100 + n)
        xml = os.path.join(root, "ILSVRC", "Annotations", "CLS-LOC", "val", stem + ".xml")
        os.makedirs(os.path.dirname(xml), exist_ok=True)
        with open(xml, "w") as f:
            f.write(voc_xml(stem, size, BOXES[n]))
    write_jpeg(os.path.join(data, "train", SEA_SNAKE, f"{SEA_SNAKE}_1.JPEG"), (5, 5))
    write_loc(root)
    kaggle = val_set(root)
    assert kaggle.kaggle and kaggle.label_source == "loc_csv" and kaggle.box_source == "xml"
    ref = val_set(official)
    assert kaggle.targets == ref.targets and kaggle.classes == ref.classes
    for i in range(len(ref)):
        assert torch.equal(kaggle[i][2], ref[i][2])
    train = ILSVRC12(root, "train", num_classes=None)
    assert train.targets == [SORTED.index(SEA_SNAKE)] and train[0][2] is None and not train.has_masks


def test_train_split_labels_by_sorted_wnid(official):
    ds = ILSVRC12(official, num_classes=None)
    assert len(ds) == 6 and not ds.has_masks
    for path, label in ds.samples:
        assert os.path.basename(os.path.dirname(path)) == SORTED[label]
    assert ds.targets == sorted(ds.targets)  # wnid folders walked in sorted order


def test_num_classes_check_names_class_list(official):
    with pytest.raises(DatasetFormatError, match=r"meta\.mat: 4 classes, expected 1000"):
        ILSVRC12(official, split="val")
    assert len(ILSVRC12(official, split="val", num_classes=4)) == 4


def test_unreadable_jpeg_error_and_skip_broken(tmp_path):
    root = write_official(tmp_path)
    broken = os.path.join(root, "val", "ILSVRC2012_val_00000002.JPEG")
    with open(broken, "rb") as f:
        raw = f.read()
    with open(broken, "wb") as f:
        f.write(raw[: len(raw) // 3])  # truncated JPEG
    ds = val_set(root)  # lazy: the index does not decode images
    assert len(ds) == 4
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_val_00000002\.JPEG"):
        ds[1]
    kept = val_set(root, skip_broken=True)
    assert kept.skipped == [broken] and len(kept) == 3
    assert kept.targets == [ds.targets[i] for i in (0, 2, 3)]  # no label shifted
    assert torch.equal(kept[1][2], ds[2][2])


def test_bad_val_inputs_name_files(tmp_path):
    root = write_official(tmp_path, loc=False)
    gt = os.path.join(root, "ILSVRC2012_devkit_t12", "data", "ILSVRC2012_validation_ground_truth.txt")
    with open(gt, "w") as f:
        f.write("490\n1001\n")  # 1001 is an internal node, and images 3-4 have no line
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_validation_ground_truth\.txt, line 2: id 1001"):
        val_set(root)
    with open(gt, "w") as f:
        f.write("490\n3\n")
    with pytest.raises(DatasetFormatError, match=r"ILSVRC2012_val_00000003\.JPEG: image number 3 has no line"):
        val_set(root)
    write_official(tmp_path / "again", loc=False)
    ds = val_set(tmp_path / "again")
    os.remove(os.path.join(tmp_path / "again", "ILSVRC2012_bbox_val_v3", "val", "ILSVRC2012_val_00000002.xml"))
    with pytest.raises(DatasetNotFoundError, match=r"ILSVRC2012_val_00000002\.xml"):
        ds[1]


def test_missing_label_sources_and_folders(tmp_path):
    write_jpeg(str(tmp_path / "bare" / "val" / "ILSVRC2012_val_00000001.JPEG"), (4, 4))
    with pytest.raises(DatasetNotFoundError, match=r"no ILSVRC12 class list .*meta\.mat.*train/<wnid>"):
        val_set(tmp_path / "bare")
    root = write_official(tmp_path, loc=False, devkit=False)
    assert ILSVRC12(root, num_classes=None).class_source == os.path.join(root, "train")
    with pytest.raises(DatasetNotFoundError, match=r"ILSVRC2012_validation_ground_truth\.txt.*LOC_val_solution\.csv"):
        val_set(root)
    with pytest.raises(DatasetNotFoundError, match=r"ILSVRC12 val folder not found"):
        val_set(tmp_path / "nowhere")
    os.makedirs(os.path.join(root, "train", "n55555555"))
    write_loc(root)
    with pytest.raises(DatasetFormatError, match=r"n55555555 is not a class of .*LOC_synset_mapping\.txt"):
        ILSVRC12(root, num_classes=None)


def test_meta_and_mapping_must_agree(tmp_path):
    root = write_official(tmp_path)
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "a") as f:
        f.write("n07777777 extra\n")
    with pytest.raises(DatasetFormatError, match=r"meta\.mat and .*LOC_synset_mapping\.txt list different wnids"):
        val_set(root)


def test_unknown_arguments(official):
    with pytest.raises(UsageError, match=r"split 'test'.*'train', 'val'"):
        ILSVRC12(official, split="test")
    with pytest.raises(UsageError, match=r"val_labels 'xml'"):
        val_set(official, val_labels="xml")
    with pytest.raises(UsageError, match=r"boxes 'csv'"):
        val_set(official, boxes="csv")


def test_repr_reports_sources(official):
    text = repr(val_set(official))
    assert text.startswith("ILSVRC12") and "Labels: devkit" in text and "Boxes: xml" in text
