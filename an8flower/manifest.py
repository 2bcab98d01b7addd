"""The on-disk format of a generated an8Flower dataset: files, manifest, ``dataset.json``.

A dataset folder holds::

    DIR/
      dataset.json                            spec, version, seed, size, counts, hashes (written last)
      manifest.csv                            one row per sample (see MANIFEST_COLUMNS)
      DATACARD.md                             the variant's data card
      croissant.json                          Croissant 1.0 JSON-LD metadata (with the manifest hash)
      images/<split>/<LL-class>/<index>.png   RGB, 8 bit
      masks/<split>/<LL-class>/<index>.png    1-bit greyscale: 1 (white) = pixel of a visible
                                              discriminative part, 0 (black) = anything else
      parts/<split>/<LL-class>/<index>.png    8-bit palette PNG: palette index = part id, the
                                              position of the part in ``spec.parts`` (0 = background)

``<index>`` is the sample index, zero-padded to six digits. ``<LL-class>`` is the class folder:
the label zero-padded to two digits (more for 100+ classes), a hyphen and the class name, e.g.
``00-centre-red`` (:func:`an8flower.layout.class_folder`), so that the folders sort in label
order and ``images/<split>`` is a torchvision ``ImageFolder`` root whose ``class_to_idx`` agrees
with the labels. The manifest's ``class`` column holds the class name (``centre-red``). Paths in
the manifest are relative to ``DIR`` with forward slashes. While ``generate`` runs, the folder
also holds ``.an8flower.lock``; an unfinished generation keeps ``.an8flower-work/``. Neither is
part of a finished dataset.

Two hashes are kept per file:

* ``<kind>_sha256``: SHA-256 of the PNG file's bytes. The PNG encoder (:mod:`an8flower.png`: fixed
  filter, fixed zlib level, no optional chunks) is deterministic, but the compressed bytes depend on
  the zlib build, so two machines may write different bytes for the same pixels;
* ``<kind>_pixels_sha256``: SHA-256 of the decoded pixel array, :func:`pixel_sha256`, which does not.

``dataset.json`` records ``manifest_sha256`` (the manifest file's bytes, which include both) and
``content_sha256``: the SHA-256 of the manifest written without the three file-byte hash columns.
The content hash covers every split, label, sampled parameter and pixel; it is the identity of a
dataset that compares across machines. The manifest hash compares byte-identical copies.
:mod:`an8flower.verify` checks a folder against all of this.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from an8flower.atomic import atomic_write_bytes, is_temp_name
from an8flower.errors import DatasetFormatError, DatasetNotFoundError
from an8flower.layout import (
    CROISSANT_NAME,
    DATACARD_NAME,
    DATASET_JSON,
    FORMAT,
    KIND_FOLDERS,
    KINDS,
    LOCK_NAME,
    MANIFEST_NAME,
    MAX_SAMPLES,
    WORK_DIR,
)
from an8flower.png import PNG_COMPRESS_LEVEL, decode_png, encode_png, png_encoder_info
from an8flower.untrusted import parse_json, read_bounded

__all__ = [
    "DATASET_JSON", "MANIFEST_NAME", "DATACARD_NAME", "CROISSANT_NAME", "WORK_DIR", "LOCK_NAME", "FORMAT", "KINDS", "KIND_FOLDERS",
    "MANIFEST_COLUMNS", "PNG_COMPRESS_LEVEL", "sha256_bytes", "sha256_file", "pixel_sha256",
    "encode_png", "decode_png", "png_encoder_info", "atomic_write_bytes", "atomic_write_text",
    "canonical_json", "is_temp_name", "ManifestRow", "manifest_bytes", "content_sha256",
    "read_manifest", "read_dataset_json", "DATASET_JSON_MAX_BYTES", "MANIFEST_ROW_MAX_BYTES",
    "DOCUMENT_MAX_BYTES",
]

#: Largest ``dataset.json`` read: the spec (at most :data:`an8flower.spec.SPEC_MAX_BYTES`) and
#: the plan, with room to spare (a built-in variant's is about 12 KB).
DATASET_JSON_MAX_BYTES = 4 << 20
#: Largest data card or ``croissant.json`` read (generate writes a few KB).
DOCUMENT_MAX_BYTES = 4 << 20
#: Largest manifest line read, on average over a file: a row is about 1.4 KB, mostly its sampled
#: parameters (``meta``), which grow with the spec's parts.
MANIFEST_ROW_MAX_BYTES = 1 << 16

MANIFEST_COLUMNS: tuple[str, ...] = (
    "index",
    "split",
    "class",
    "label",
    "image",
    "mask",
    "parts",
    "image_sha256",
    "mask_sha256",
    "parts_sha256",
    "image_pixels_sha256",
    "mask_pixels_sha256",
    "parts_pixels_sha256",
    "meta",
)
#: Columns left out of the content hash: they depend on the zlib build.
BYTE_HASH_COLUMNS: tuple[str, ...] = ("image_sha256", "mask_sha256", "parts_sha256")

# --------------------------------------------------------------------------------------------
# hashing


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pixel_sha256(array: np.ndarray) -> str:
    """Hex SHA-256 of a decoded pixel array, independent of how it was compressed.

    The hashed bytes are the header ``"<dtype> <d0>x<d1>[x<d2>]\\n"`` (NumPy's dtype string, e.g.
    ``|u1`` for uint8 and ``|b1`` for bool) followed by the array's elements in C order. A bool mask
    therefore hashes differently from the same values as uint8.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:  # some producers store True as a byte other than 1
        array = array.view(np.uint8) != 0
    header = f"{array.dtype.str} {'x'.join(str(d) for d in array.shape)}\n".encode("ascii")
    h = hashlib.sha256(header)
    h.update(array.data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes (the implementation is :mod:`an8flower.atomic`; re-exported here)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text with ``\\n`` line ends."""
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, two-space indent and a final newline: the form of every JSON file."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class ManifestRow:
    """One sample of a generated dataset (one manifest line).

    Attributes:
        index: global sample index, the renderer's ``index`` argument.
        split: ``"train"``, ``"val"`` or ``"test"``.
        class_name: folder name of the class (``spec.classes[label]``).
        label: class index.
        files: relative path of each kind (``"image"``, ``"mask"``, ``"parts"``).
        sha256: SHA-256 of each file's bytes.
        pixels_sha256: :func:`pixel_sha256` of each file's decoded array.
        meta: the renderer's sampled parameters.
    """

    index: int
    split: str
    class_name: str
    label: int
    files: Mapping[str, str]
    sha256: Mapping[str, str]
    pixels_sha256: Mapping[str, str]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, str]:
        """The row as strings keyed by :data:`MANIFEST_COLUMNS`."""
        rec = {
            "index": str(self.index),
            "split": self.split,
            "class": self.class_name,
            "label": str(self.label),
            "meta": json.dumps(self.meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        }
        for kind in KINDS:
            rec[kind] = self.files[kind]
            rec[f"{kind}_sha256"] = self.sha256[kind]
            rec[f"{kind}_pixels_sha256"] = self.pixels_sha256[kind]
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, str]) -> ManifestRow:
        """Inverse of :meth:`to_record`; raises ``KeyError``/``ValueError`` on a malformed record."""
        return cls(
            index=int(rec["index"]),
            split=rec["split"],
            class_name=rec["class"],
            label=int(rec["label"]),
            files={k: rec[k] for k in KINDS},
            sha256={k: rec[f"{k}_sha256"] for k in KINDS},
            pixels_sha256={k: rec[f"{k}_pixels_sha256"] for k in KINDS},
            meta=_meta(rec["meta"]),
        )


def _meta(text: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except RecursionError:
        raise ValueError("column meta: JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"column meta: expected a JSON object, got {type(meta).__name__}")
    return meta


def _csv_bytes(records: Iterable[Mapping[str, str]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow([rec[c] for c in columns])
    return buf.getvalue().encode("utf-8")


def manifest_bytes(rows: Sequence[ManifestRow]) -> bytes:
    """The manifest file's exact bytes: CSV, header line, one line per row in index order, ``\\n``."""
    return _csv_bytes((r.to_record() for r in sorted(rows, key=lambda r: r.index)), MANIFEST_COLUMNS)


def content_sha256(rows: Sequence[ManifestRow]) -> str:
    """SHA-256 of the manifest without the file-byte hash columns (comparable across machines)."""
    columns = [c for c in MANIFEST_COLUMNS if c not in BYTE_HASH_COLUMNS]
    return sha256_bytes(_csv_bytes((r.to_record() for r in sorted(rows, key=lambda r: r.index)), columns))


def read_manifest(path: str | os.PathLike[str], data: bytes | None = None, *,
                  max_rows: int = MAX_SAMPLES) -> list[ManifestRow]:
    """Parse a manifest file (or its bytes ``data``, already read from ``path``).

    The file is read only when it is a regular file of at most ``(max_rows + 1) *``
    :data:`MANIFEST_ROW_MAX_BYTES` bytes (:func:`an8flower.untrusted.read_bounded`). The rows are
    returned as written; paths in them are not checked here (see :mod:`an8flower.verify` and
    :func:`an8flower.untrusted.resolve_inside`).

    Args:
        path: the manifest. data: its bytes, if already read.
        max_rows: the most rows accepted (the dataset's sample count when known).

    Raises:
        DatasetNotFoundError: no such file. DatasetFormatError: naming the file and line: not a
            regular file, too large, not UTF-8, a field over Python's CSV limit (131,072
            characters), a malformed row, JSON in ``meta`` that is not an object or nests too
            deeply, more than ``max_rows`` rows.
    """
    path = Path(path)
    if data is None:
        data = read_bounded(path, (max_rows + 1) * MANIFEST_ROW_MAX_BYTES, "manifest")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 ({exc})") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        rows: list[ManifestRow] = []
        try:
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                shown = _short_repr(reader.fieldnames)
                raise DatasetFormatError(f"{path}: unexpected header {shown}; expected {list(MANIFEST_COLUMNS)}")
            for rec in reader:
                if len(rows) == max_rows:
                    raise DatasetFormatError(f"{path}, line {reader.line_num}: more than the {max_rows:,} rows the "
                                             "dataset holds")
                try:
                    rows.append(ManifestRow.from_record(rec))
                except (KeyError, ValueError, TypeError) as exc:
                    raise DatasetFormatError(f"{path}, line {reader.line_num}: malformed row "
                                             f"({_short_repr(exc, 300)})") from None
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
            raise DatasetFormatError(f"{path}, line {reader.line_num + 1}: not valid CSV ({exc})") from None
    return rows


def _short_repr(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# dataset.json


def read_dataset_json(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``root/dataset.json``; clear errors when the folder is not a (complete) dataset.

    Read only when a regular file of at most :data:`DATASET_JSON_MAX_BYTES`; JSON that does not
    parse, or nests too deeply, is a :class:`DatasetFormatError` naming the file.
    """
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        what = "is a file, not a dataset folder" if root.exists() else "no such dataset folder"
        raise DatasetNotFoundError(f"{root}: {what}")
    if not os.path.lexists(path):
        hint = " (an unfinished generation: re-run `an8flower generate` to resume)" if (root / WORK_DIR).is_dir() else ""
        raise DatasetNotFoundError(f"{root}: not an an8flower dataset, {DATASET_JSON} is missing{hint}")
    info = parse_json(read_bounded(path, DATASET_JSON_MAX_BYTES, DATASET_JSON), str(path))
    found = info.get("format") if isinstance(info, dict) else None
    if found == "an8flower-dataset/1":
        raise DatasetFormatError(f"{path}: written by an earlier an8flower (format an8flower-dataset/1, class "
                                 f"folders without their label); this version reads {FORMAT}: regenerate the folder "
                                 "with `an8flower generate`")
    if found != FORMAT:
        raise DatasetFormatError(f"{path}: not an {FORMAT} file (format={_short_repr(repr(found))})")
    return info
