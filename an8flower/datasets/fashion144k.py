"""Fashion144k (Simo-Serra et al., CVPR 2015) with a single-label class subset.

The release (144,169 chictopia.com posts), as read here (``root`` is the folder the user points to):

* ``photos.txt``: the image paths, one per line, UTF-8 (names may hold non-ASCII characters);
  line ``i`` (0-based) is post ``i``. A path is resolved against ``root`` when the first entry
  exists there, else against ``root/photos/``. Every path must stay inside that folder: an
  absolute path or a ``..`` component is refused when ``photos.txt`` is read, a symbolic link
  leading outside when the image is read (naming the line).
* ``feat/col_cco.mat`` (colour tags) and ``feat/garflat_cco.mat`` (garment tags): MATLAB files
  holding a sparse post x tag matrix as triplets ``rows``, ``cols``, ``data``.
* ``split.mat``: the post ids of each split in ``trainids``, ``validids``, ``testids``.

**0- or 1-based ids.** Loaders of the release disagree on whether those ids count from 0 or 1, so
the loader decides on the data, per file: ids containing 0 are 0-based; ids reaching N (the
number of posts in ``photos.txt``) are 1-based; both, or any id outside 0..N, is an error. When a
file holds neither 0 nor N the convention cannot be told: the loader then raises and asks for
``split_index_base`` / ``tag_index_base`` (0 or 1) explicitly (default ``"auto"``, never a guess).
The tag columns of a triplet file use the convention found for its rows (if the rows are
ambiguous, a column 0 settles it for 0-based).

**Classes.** The paper (Oramas et al., ICLR 2019) fine-tuned a VGG-F on a 12-class subset of
Fashion144k but did not publish its classes, so the subset is an explicit rule here:

* the class tags are the ``num_classes`` (default 12) tags of ``label_source`` (default the colour
  tags) present in the most **training** posts (ties: lower tag index first), in that order; or
  the ``class_tags`` given explicitly (indices, or names when ``tag_names`` is known), in the
  order given; the same list is used for every split;
* a post's label is its **dominant** class tag: the class tag with the largest value in the tag
  matrix (for presence data, the only class tag it has). Posts with none of the class tags, or
  with a tie for the largest value, are excluded (they have no single label).

No localisation masks: items are ``(image, label, None)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from an8flower.datasets.base import ExplanationDataset, Item
from an8flower.datasets.files import PHOTO_MAX_PIXELS, check_split, load_image, require_file
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError
from an8flower.untrusted import check_relative_path, resolve_inside

__all__ = [
    "Fashion144k",
    "read_photos_txt",
    "read_sparse_triplets",
    "read_split_mat",
    "detect_index_base",
    "tag_matrix",
    "most_frequent_tags",
    "dominant_tag_labels",
]

SPLITS = ("train", "val", "test")
LABEL_SOURCES = {"colour": os.path.join("feat", "col_cco.mat"), "garment": os.path.join("feat", "garflat_cco.mat")}
#: Accepted variable names in ``split.mat`` for each split (first found wins).
SPLIT_KEYS = {
    "train": ("trainids", "train_ids", "train"),
    "val": ("validids", "valids", "valid_ids", "val_ids", "valid", "val"),
    "test": ("testids", "test_ids", "test"),
}

IndexBase = str | int


def _loadmat(path: str) -> dict:
    from scipy.io import loadmat

    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"MATLAB file not found: {path}")
    try:
        return loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3)...
        raise DatasetFormatError(f"cannot read MATLAB file {path}: {exc}") from exc


def _integer_vector(value: np.ndarray, path: str, name: str) -> np.ndarray:
    vector = np.asarray(value).reshape(-1)
    if vector.dtype.kind not in "iuf" or (vector.dtype.kind == "f" and not np.all(np.isfinite(vector))):
        raise DatasetFormatError(f"{path}: '{name}' must be a numeric vector, got {vector.dtype}")
    as_int = vector.astype(np.int64)
    if vector.dtype.kind == "f" and not np.array_equal(as_int, vector):
        raise DatasetFormatError(f"{path}: '{name}' holds non-integer values")
    return as_int


def read_photos_txt(path: str | os.PathLike[str]) -> list[str]:
    """Read ``photos.txt``: one image path per line, UTF-8 (a BOM is tolerated).

    Returns:
        The paths in file order (line ``i`` is post ``i``); trailing blank lines are ignored.

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: invalid UTF-8, a blank line before the end (it would shift every
            later post), or a path that is not a plain relative one (absolute, ``..``, backslash:
            :func:`an8flower.untrusted.check_relative_path`), naming file and line.
    """
    path = os.fspath(path)
    require_file(path, "Fashion144k photos.txt")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise DatasetFormatError(f"{path}, line {line_no}: invalid UTF-8 ({exc.reason})") from exc
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    for k, line in enumerate(lines):
        if not line.strip():
            raise DatasetFormatError(f"{path}, line {k + 1}: blank line inside the photo list")
        check_relative_path(line, f"{path}, line {k + 1}")
    return lines


def read_sparse_triplets(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a MATLAB file of sparse triplets ``rows``, ``cols``, ``data`` (as stored: no base shift).

    Returns:
        ``(rows, cols, data)``: int64, int64, float64 vectors of equal length.

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: unreadable file, a missing variable, non-integer indices, vectors of
            different lengths (message names the file).
    """
    path = os.fspath(path)
    mat = _loadmat(path)
    missing = [k for k in ("rows", "cols", "data") if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(f"{path}: missing variable(s) {missing} (found: {found})")
    rows = _integer_vector(mat["rows"], path, "rows")
    cols = _integer_vector(mat["cols"], path, "cols")
    data = np.asarray(mat["data"]).reshape(-1)
    if data.dtype.kind not in "iufb":
        raise DatasetFormatError(f"{path}: 'data' must be numeric, got {data.dtype}")
    if not len(rows) == len(cols) == len(data):
        raise DatasetFormatError(
            f"{path}: mismatched triplet lengths rows={len(rows)}, cols={len(cols)}, data={len(data)}"
        )
    return rows, cols, data.astype(np.float64)


def read_split_mat(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read ``split.mat``: the post ids of ``train``, ``val`` and ``test`` (as stored: no base shift).

    The variables are looked up by the names in :data:`SPLIT_KEYS` (``trainids``, ``validids``,
    ``testids`` in the release).

    Raises:
        DatasetNotFoundError: no such file.
        DatasetFormatError: unreadable, a split's variable missing, non-integer ids, an id in two
            splits (message names the file).
    """
    path = os.fspath(path)
    mat = _loadmat(path)
    out: dict[str, np.ndarray] = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in mat), None)
        if key is None:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DatasetFormatError(f"{path}: no ids for split {split!r} (looked for {list(keys)}, found {found})")
        out[split] = _integer_vector(mat[key], path, key)
    seen = np.concatenate(list(out.values()))
    if len(np.unique(seen)) != len(seen):
        raise DatasetFormatError(f"{path}: some post ids appear twice (within or across splits)")
    return out


def detect_index_base(ids: np.ndarray, n: int) -> int | None:
    """Whether ``ids`` (indices of ``n`` items) count from 0 or 1.

    Returns:
        0 if ``ids`` contains 0, 1 if it contains ``n``, None if neither (ambiguous).

    Raises:
        ValueError: an id below 0 or above ``n``, or both 0 and ``n`` present (callers turn it into
            a :class:`DatasetFormatError` naming the file).
    """
    if len(ids) == 0:
        return None
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi > n:
        raise ValueError(f"ids range {lo}..{hi} does not fit {n} items")
    if lo == 0 and hi == n:
        raise ValueError(f"ids range 0..{n} holds {n + 1} values for {n} items")
    return 0 if lo == 0 else 1 if hi == n else None


def _resolve_base(ids: np.ndarray, n: int, base: IndexBase, path: str, what: str, argument: str) -> int:
    """Apply the ``"auto"`` rule, or check an explicit base; errors name the file."""
    try:
        found = detect_index_base(ids, n)
    except ValueError as exc:
        raise DatasetFormatError(f"{path}: {what}: {exc} (photos.txt lists {n} posts)") from exc
    if base == "auto":
        if found is None:
            raise DatasetFormatError(
                f"{path}: cannot tell whether the {what} are 0- or 1-based (range "
                f"{int(ids.min())}..{int(ids.max())} for {n} posts); pass {argument}=0 or 1"
            )
        return found
    if found is not None and found != base:
        raise DatasetFormatError(f"{path}: {argument}={base} but the {what} are {found}-based")
    return int(base)


def tag_matrix(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape: tuple[int, int]):
    """``scipy.sparse.csr_matrix`` of the (already 0-based) triplets; repeated entries are summed."""
    from scipy.sparse import coo_matrix

    return coo_matrix((data, (rows, cols)), shape=shape).tocsr()


def most_frequent_tags(matrix, posts: np.ndarray, k: int) -> list[int]:
    """The ``k`` tags present (value > 0) in the most of ``posts``; ties: lower tag index first."""
    present = (matrix[posts] > 0).sum(axis=0)
    counts = np.asarray(present).reshape(-1)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return [int(t) for t in order[:k] if counts[t] > 0]


def dominant_tag_labels(matrix, class_tags: Sequence[int]) -> np.ndarray:
    """Per post, the position in ``class_tags`` of its dominant class tag, or -1.

    ``label[i] = argmax_j M[i, class_tags[j]]`` when that maximum is > 0 and reached by exactly
    one ``j``; -1 when post ``i`` has none of the class tags or a tie.
    """
    values = np.asarray(matrix[:, list(class_tags)].todense(), dtype=np.float64)
    best = values.max(axis=1) if values.shape[1] else np.zeros(values.shape[0])
    unique = (values == best[:, None]).sum(axis=1) == 1
    labels = values.argmax(axis=1) if values.shape[1] else np.zeros(values.shape[0], dtype=np.int64)
    return np.where((best > 0) & unique, labels, -1).astype(np.int64)


def _read_names(tag_names: Sequence[str] | str | os.PathLike[str] | None) -> list[str] | None:
    if tag_names is None:
        return None
    if isinstance(tag_names, (str, os.PathLike)):
        path = os.fspath(tag_names)
        require_file(path, "tag names file")
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f]
        while names and not names[-1].strip():
            names.pop()
        return names
    return [str(n) for n in tag_names]


class Fashion144k(ExplanationDataset):
    """Fashion144k posts with one dominant-tag label each (see the module docstring for the rule).

    Items are ``(image, label, None)``: ``image`` float32 (3, H, W) in [0, 1] (or
    ``transform(PIL RGB image)``); ``label`` the position of the post's dominant tag in
    ``class_tags``. The index comes from the text and MATLAB files; images are decoded in
    ``__getitem__`` (an unreadable one raises :class:`DatasetFormatError` naming it).

    Args:
        root: the release folder (``photos.txt``, ``photos/``, ``feat/``, ``split.mat``).
        split: ``"train"``, ``"val"`` or ``"test"`` (``trainids``, ``validids``, ``testids``).
        transform: applied to the PIL RGB image.
        mask_transform: unused (no masks); accepted for a uniform signature.
        label_source: ``"colour"`` (``feat/col_cco.mat``) or ``"garment"`` (``feat/garflat_cco.mat``).
        num_classes: how many most-frequent tags form the classes (default 12, the paper's count).
        class_tags: explicit class tags (0-based tag indices, or names if ``tag_names`` is given),
            overriding the frequency rule; the class order is the order given.
        tag_names: the names of the tags of ``label_source`` (a list, or a UTF-8 text file with one
            name per line, line ``j`` = tag ``j``); default names are ``"<label_source>_<j>"``.
        tag_file: a different triplet file to read the labels from.
        split_index_base, tag_index_base: ``"auto"`` (detect, see the module docstring), 0 or 1.
        max_pixels: the largest ``width * height`` of a photo that is decoded (default
            :data:`an8flower.untrusted.PHOTO_MAX_PIXELS`; checked from the header first).

    Raises:
        UsageError: unknown ``split`` / ``label_source``, bad ``class_tags`` or ``num_classes``.
        DatasetNotFoundError / DatasetFormatError: missing or malformed files, ids that do not fit
            the number of posts in ``photos.txt``, ambiguous index bases (messages name the files).
    """

    has_masks = False

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable | None = None,
        mask_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        label_source: str = "colour",
        num_classes: int = 12,
        class_tags: Sequence[int | str] | None = None,
        tag_names: Sequence[str] | str | os.PathLike[str] | None = None,
        tag_file: str | os.PathLike[str] | None = None,
        split_index_base: IndexBase = "auto",
        tag_index_base: IndexBase = "auto",
        max_pixels: int = PHOTO_MAX_PIXELS,
    ) -> None:
        super().__init__(root, check_split(split, SPLITS), transform, mask_transform)
        check_split(label_source, tuple(LABEL_SOURCES), "label_source")
        for name, base in (("split_index_base", split_index_base), ("tag_index_base", tag_index_base)):
            if base not in ("auto", 0, 1):
                raise UsageError(f"{name} must be 'auto', 0 or 1, got {base!r}")
        self.label_source = label_source
        self.max_pixels = int(max_pixels)
        self.photos_file = os.path.join(self.root, "photos.txt")
        self.split_file = os.path.join(self.root, "split.mat")
        self.tag_file = os.fspath(tag_file) if tag_file is not None else os.path.join(self.root, LABEL_SOURCES[label_source])

        self.photos = read_photos_txt(self.photos_file)
        n = len(self.photos)
        if n == 0:
            raise DatasetFormatError(f"{self.photos_file}: no photos listed")
        self.image_dir = self._image_dir()

        splits = read_split_mat(self.split_file)
        all_ids = np.concatenate(list(splits.values()))
        self.split_index_base = _resolve_base(all_ids, n, split_index_base, self.split_file, "split ids", "split_index_base")
        splits = {k: v - self.split_index_base for k, v in splits.items()}

        rows, cols, data = read_sparse_triplets(self.tag_file)
        self.tag_index_base = self._tag_base(rows, cols, n, tag_index_base)
        rows, cols = rows - self.tag_index_base, cols - self.tag_index_base
        if len(cols) and cols.min() < 0:
            raise DatasetFormatError(f"{self.tag_file}: negative tag index after the {self.tag_index_base}-based shift")
        names = _read_names(tag_names)
        num_tags = int(cols.max()) + 1 if len(cols) else 0
        if names is not None:
            if len(names) < num_tags:
                raise DatasetFormatError(f"{self.tag_file}: tag index {num_tags - 1} but only {len(names)} tag names")
            num_tags = len(names)
        matrix = tag_matrix(rows, cols, data, (n, num_tags))

        self.class_tags = self._class_tags(matrix, splits["train"], class_tags, num_classes, names, num_tags)
        self.classes = [names[t] if names is not None else f"{label_source}_{t}" for t in self.class_tags]
        labels = dominant_tag_labels(matrix, self.class_tags)
        ids = splits[split]
        keep = labels[ids] >= 0
        #: 0-based post index (line of photos.txt) of each item.
        self.post_ids = ids[keep]
        self.targets = labels[self.post_ids].tolist()

    def _image_dir(self) -> str:
        first = self.photos[0]
        for folder in (self.root, os.path.join(self.root, "photos")):
            if os.path.isfile(os.path.join(folder, first)):
                return folder
        raise DatasetNotFoundError(
            f"first image of {self.photos_file} ({first!r}) not found in {self.root} or "
            f"{os.path.join(self.root, 'photos')}"
        )

    def _tag_base(self, rows: np.ndarray, cols: np.ndarray, n: int, base: IndexBase) -> int:
        if base == "auto" and len(rows):
            try:
                found = detect_index_base(rows, n)
            except ValueError as exc:
                raise DatasetFormatError(
                    f"{self.tag_file}: post rows: {exc} (photos.txt lists {n} posts)"
                ) from exc
            if found is None and int(cols.min()) == 0:
                return 0
        return _resolve_base(rows, n, base, self.tag_file, "post rows", "tag_index_base")

    def _class_tags(self, matrix, train_ids: np.ndarray, class_tags, num_classes: int,
                    names: list[str] | None, num_tags: int) -> list[int]:
        if class_tags is None:
            if not isinstance(num_classes, int) or num_classes < 1:
                raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
            tags = most_frequent_tags(matrix, train_ids, num_classes)
            if len(tags) < num_classes:
                raise DatasetFormatError(
                    f"{self.tag_file}: only {len(tags)} tags occur in the training posts, num_classes={num_classes}"
                )
            return tags
        out = []
        for tag in class_tags:
            if isinstance(tag, str):
                if names is None or tag not in names:
                    raise UsageError(f"class_tags: unknown tag name {tag!r} (pass tag_names to use names)")
                tag = names.index(tag)
            if not 0 <= int(tag) < num_tags:
                raise UsageError(f"class_tags: tag index {tag} outside 0..{num_tags - 1}")
            out.append(int(tag))
        if not out or len(set(out)) != len(out):
            raise UsageError(f"class_tags must be a non-empty list of distinct tags, got {list(class_tags)!r}")
        return out

    def image_path(self, index: int) -> str:
        """Path of the image of item ``index`` (checked to lie inside the image folder)."""
        post = int(self.post_ids[index])
        return resolve_inside(self.image_dir, self.photos[post], f"{self.photos_file}, line {post + 1}")

    def __len__(self) -> int:
        return len(self.post_ids)

    def __getitem__(self, index: int) -> Item:
        return self._finish(load_image(self.image_path(index), max_pixels=self.max_pixels), self.targets[index], None)

    def extra_repr(self) -> str:
        return (f"Labels: dominant {self.label_source} tag of {len(self.class_tags)} classes {self.class_tags}\n"
                f"Index bases: split {self.split_index_base}, tags {self.tag_index_base}")
