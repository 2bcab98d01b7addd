"""Export a generated dataset folder to the formats the ecosystem reads: Parquet and WebDataset.

``an8flower export DIR --format parquet|webdataset --out OUT`` (and :func:`export_dataset`) writes
one sample per row / per tar key, in manifest index order, carrying the image, mask and part map as
the dataset's own PNG files (byte for byte) and every manifest column. What lands in ``OUT``:

Parquet (``--format parquet``), laid out as a Hugging Face dataset repository::

    OUT/README.md                              dataset card: Hugging Face YAML header + the data card
    OUT/data/<split>-<i:05d>-of-<n:05d>.parquet   at most ``shard_size`` rows per file
    OUT/manifest.json                          the dataset's hashes, the settings, every file's sha256

Columns, in the manifest's order (:data:`an8flower.manifest.MANIFEST_COLUMNS`): ``index`` int64,
``split`` string, ``class`` string, ``label`` int64 (Hugging Face ``ClassLabel(names=classes)``),
``image`` / ``mask`` / ``parts`` (Hugging Face ``Image``: an Arrow struct ``{bytes: binary, path:
string}`` with the PNG bytes and the manifest's relative path), the six ``*_sha256`` strings and
``meta`` (the manifest's JSON text). The Arrow schema metadata holds ``huggingface`` (the JSON
``{"info": {"features": ...}}`` that ``datasets`` writes and reads back as the features, see
``datasets.Features.from_arrow_schema``) and ``an8flower`` (:func:`provenance`: the manifest and
content SHA-256, the variant, seed, size, the generator's and the exporter's versions, the split
and shard). ``datasets.load_dataset("parquet", data_files={...})`` or ``load_dataset(OUT)`` (the
card's ``configs``) therefore yield PIL images (the mask in mode ``"1"``, the part map in mode
``"P"``: ``numpy.asarray`` gives bool and part ids) and a ``ClassLabel``.

WebDataset (``--format webdataset``)::

    OUT/<split>-<i:06d>.tar                    at most ``shard_size`` samples per shard
    OUT/README.md, OUT/manifest.json           as above (the card's YAML has no ``dataset_info``)

Each sample is the key ``<index:06d>`` with the members ``<key>.cls`` (the label as decimal
text), ``<key>.image.png``, ``<key>.json`` (the manifest row: ``index`` and ``label`` as numbers,
``meta`` as an object, the other columns as strings), ``<key>.mask.png`` and ``<key>.parts.png``,
in that (sorted) order. ``webdataset.WebDataset(urls, shardshuffle=False)`` reads it; its default
decoder turns ``cls`` into an int and ``json`` into a dict.

Determinism: the same dataset, options and library versions give the same bytes. Rows are in
index order; shards cut the split into consecutive runs of ``shard_size`` rows; Parquet files use
:data:`PARQUET_COMPRESSION` at a fixed level, row groups of :data:`PARQUET_ROW_GROUP_SIZE` rows
and no time stamp (pyarrow's ``created_by`` names its version, which ``manifest.json`` records);
tar members have mtime 0, uid and gid 0, empty user and group names, mode 0644, ustar format.

Checks while exporting (every failure names the file), the same as the loaders': the folder
must pass :func:`an8flower.verify.check_dataset` (``dataset.json`` is what generate writes for its
spec, seed and per-class; ``manifest.csv`` hashes to ``manifest_sha256`` and ``content_sha256``;
every row follows the index plan: label, split and file names from the index), so a folder with a
row moved between splits or relabelled, hashes updated, is refused; every sample file path must
stay inside ``DIR`` through no symbolic link, and every file is read by
:func:`an8flower.verify.read_sample_file` (a regular file no larger than a PNG of the dataset's
size can be, checked before reading; its bytes hash to the row's ``<kind>_sha256``; its PNG header
gives the dataset's size). Output goes to a hidden temporary folder next to ``OUT`` that is renamed to ``OUT`` when
complete, so an error or an interrupt leaves no half-written export; the temporary folder of an
export killed outright (``SIGKILL``, a power loss) is removed by the next export to the same
``OUT`` (:func:`remove_stale_temporaries`). An existing non-empty ``OUT``
is refused unless ``overwrite=True``, and even then only when it is an earlier an8flower export
(its ``manifest.json`` says so): the command never deletes a folder it did not write.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from an8flower import __version__
from an8flower.atomic import reporting_disk_full
from an8flower.defaults import EXPORT_SHARD_SIZE as DEFAULT_SHARD_SIZE
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, UsageError
from an8flower.layout import DATACARD_NAME, MANIFEST_NAME, SPLITS
from an8flower.manifest import (
    DOCUMENT_MAX_BYTES,
    MANIFEST_COLUMNS,
    ManifestRow,
    canonical_json,
    sha256_bytes,
    sha256_file,
)
from an8flower.png import KINDS

__all__ = [
    "FORMATS", "EXPORT_FORMAT", "EXPORT_MANIFEST", "CARD_NAME", "DEFAULT_SHARD_SIZE", "PARQUET_ROW_GROUP_SIZE",
    "PARQUET_COMPRESSION", "ExportResult", "export_dataset", "hf_features", "provenance", "sample_record",
    "dataset_card",
    "remove_stale_temporaries",
]

#: The ``--format`` values.
FORMATS: tuple[str, ...] = ("parquet", "webdataset")
#: Format tag of an export's ``manifest.json``.
EXPORT_FORMAT = "an8flower-export/1"
#: File names at the top of an export.
EXPORT_MANIFEST = "manifest.json"
CARD_NAME = "README.md"
#: Rows per Parquet row group (the unit ``datasets`` reads at a time).
PARQUET_ROW_GROUP_SIZE = 100
#: Parquet codec and level; PNG bytes do not compress further, the hash and meta columns do.
PARQUET_COMPRESSION: tuple[str, int] = ("zstd", 3)
#: Columns with Parquet min/max statistics (a binary column's would copy image bytes into the footer).
_STATISTICS_COLUMNS = ("index", "split", "class", "label")
#: Bytes an exported sample file adds beside its PNG bytes (columns, tar headers), an upper bound.
_ROW_BYTES = 2048
#: Bytes of the card and ``manifest.json`` of an export, an upper bound.
_CARD_BYTES = 200_000
#: Width of the zero-padded index in WebDataset keys.
_KEY_DIGITS = 6
_TAR_MODE = 0o644


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_dataset` wrote.

    Attributes:
        out: the export folder.
        format: ``"parquet"`` or ``"webdataset"``.
        rows: rows written per exported split.
        files: SHA-256 of every file written, by path relative to ``out`` (``manifest.json`` excluded).
        manifest_sha256: SHA-256 of the written ``manifest.json``.
    """

    out: Path
    format: str
    rows: Mapping[str, int]
    files: Mapping[str, str]
    manifest_sha256: str


# --------------------------------------------------------------------------------------------
# the source folder, read and checked


class _Source:
    """A dataset folder, checked as the loaders check it; its sample files checked as they are read."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        from an8flower.untrusted import resolve_inside
        from an8flower.verify import check_dataset, read_dataset

        self.root = Path(root)
        self.manifest = self.root / MANIFEST_NAME
        self.info, data, rows = read_dataset(self.root)
        #: Every sample file, checked up front so that a bad path fails before anything is written.
        self.paths = {(r.index, kind): Path(resolve_inside(self.root, r.files[kind], f"{self.manifest}: file path",
                                                           links=False))
                      for r in rows for kind in KINDS}
        self.spec = check_dataset(self.root, self.info, data, rows)  # the loaders' index-plan checks
        self.classes: tuple[str, ...] = tuple(self.info["classes"])
        self.rows: list[ManifestRow] = sorted(rows, key=lambda r: r.index)

    def read(self, row: ManifestRow, kind: str) -> bytes:
        """The bytes of a sample file, checked as the loaders check them
        (:func:`an8flower.verify.read_sample_file`: inside, no link, bounded, hash, PNG size)."""
        from an8flower.verify import read_sample_file

        try:
            return read_sample_file(self.root, row, kind, self.spec.size)[1]
        except DatasetNotFoundError:
            raise DatasetNotFoundError(f"{self.paths[row.index, kind]}: missing (sample {row.index} of "
                                       f"{self.manifest})") from None

    def data_card(self) -> str | None:
        """The folder's data card (the layout's name), checked against ``data_card_sha256``."""
        from an8flower.untrusted import read_bounded

        path = self.root / DATACARD_NAME
        data = read_bounded(path, DOCUMENT_MAX_BYTES, "data card")
        if sha256_bytes(data) != self.info.get("data_card_sha256"):
            raise DatasetFormatError(f"{path}: sha256 differs from data_card_sha256 in dataset.json")
        return data.decode("utf-8", "replace")


def provenance(info: Mapping[str, Any]) -> dict[str, Any]:
    """What an export records about its source: hashes, variant, seed, size, versions.

    ``manifest_sha256`` pins the source's exact bytes, ``content_sha256`` its pixels and labels
    across machines (see :mod:`an8flower.manifest`).
    """
    keys = ("manifest_sha256", "content_sha256", "variant", "spec_sha256", "seed", "size", "per_class",
            "num_samples", "an8flower_version", "code_sha256")
    record = {k: info.get(k) for k in keys}
    record["exporter_version"] = __version__
    return record


def sample_record(row: ManifestRow) -> dict[str, Any]:
    """The manifest row of a sample as typed values: ``index`` and ``label`` ints, the rest strings.

    ``meta`` is the manifest's exact JSON text, so the manifest (and its hashes) can be rebuilt from
    an export with :meth:`ManifestRow.from_record`.
    """
    record: dict[str, Any] = dict(row.to_record())
    record["index"], record["label"] = row.index, row.label
    return record


# --------------------------------------------------------------------------------------------
# shards


@dataclass(frozen=True)
class _Shard:
    split: str
    number: int  # 0-based
    count: int  # shards of this split
    rows: Sequence[ManifestRow]


def _plan_shards(rows: Sequence[ManifestRow], splits: Sequence[str], shard_size: int) -> list[_Shard]:
    """Each split's rows (index order) cut into consecutive runs of ``shard_size``; empty splits have none."""
    shards: list[_Shard] = []
    for split in splits:
        mine = [r for r in rows if r.split == split]
        n = math.ceil(len(mine) / shard_size)
        shards.extend(_Shard(split, i, n, mine[i * shard_size:(i + 1) * shard_size]) for i in range(n))
    return shards


def _shard_name(fmt: str, shard: _Shard) -> str:
    if fmt == "parquet":
        return f"data/{shard.split}-{shard.number:05d}-of-{shard.count:05d}.parquet"
    return f"{shard.split}-{shard.number:06d}.tar"


# --------------------------------------------------------------------------------------------
# Parquet


def hf_features(classes: Sequence[str]) -> dict[str, Any]:
    """The Hugging Face features of the Parquet columns, in ``datasets.Features.to_dict()`` form.

    ``label`` is ``ClassLabel(names=classes)``, ``image``/``mask``/``parts`` are ``Image()``, the
    other columns ``Value("int64")`` or ``Value("string")``.
    """
    features: dict[str, Any] = {}
    for column in MANIFEST_COLUMNS:
        if column == "label":
            features[column] = {"names": list(classes), "_type": "ClassLabel"}
        elif column in KINDS:
            features[column] = {"_type": "Image"}
        else:
            features[column] = {"dtype": "int64" if column == "index" else "string", "_type": "Value"}
    return features


def _arrow_schema(classes: Sequence[str], metadata: Mapping[str, Any]):
    """The Arrow schema of a shard: :func:`hf_features`' Arrow types and the two metadata keys."""
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {"Image": image, "ClassLabel": pa.int64()}
    fields = [(name, types.get(f["_type"]) or pa.type_for_alias(f["dtype"])) for name, f in hf_features(classes).items()]
    return pa.schema(fields, metadata={
        "huggingface": json.dumps({"info": {"features": hf_features(classes)}}, ensure_ascii=False),
        "an8flower": json.dumps(metadata, sort_keys=True, ensure_ascii=False),
    })


def _chunks(seq: Sequence[ManifestRow], size: int) -> Iterator[Sequence[ManifestRow]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _write_parquet(path: Path, shard: _Shard, source: _Source, bar: Any) -> int:
    """Write one Parquet shard; returns its Arrow size in bytes (``datasets``' ``num_bytes``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {**provenance(source.info), "split": shard.split, "shard": shard.number, "shards": shard.count,
            "rows": len(shard.rows)}
    schema = _arrow_schema(source.classes, meta)
    codec, level = PARQUET_COMPRESSION
    nbytes = 0
    with pq.ParquetWriter(path, schema, compression=codec, compression_level=level,
                          write_statistics=list(_STATISTICS_COLUMNS), sorting_columns=[pq.SortingColumn(0)]) as writer:
        for group in _chunks(shard.rows, PARQUET_ROW_GROUP_SIZE):
            columns: dict[str, list[Any]] = {name: [] for name in schema.names}
            for row in group:
                for name, value in sample_record(row).items():
                    columns[name].append({"bytes": source.read(row, name), "path": value} if name in KINDS else value)
                bar.update(1)
            table = pa.table(columns, schema=schema)
            writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_SIZE)
            nbytes += table.nbytes
    return nbytes


# --------------------------------------------------------------------------------------------
# WebDataset


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, _TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _write_tar(path: Path, shard: _Shard, source: _Source, bar: Any) -> None:
    """Write one WebDataset tar shard."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for row in shard.rows:
            key = f"{row.index:0{_KEY_DIGITS}d}"
            record = sample_record(row)
            record["meta"] = dict(row.meta)
            members = {f"{key}.{kind}.png": source.read(row, kind) for kind in KINDS}
            members[f"{key}.json"] = json.dumps(record, sort_keys=True, separators=(",", ":"),
                                                ensure_ascii=False).encode("utf-8")
            members[f"{key}.cls"] = str(row.label).encode("ascii")
            for name in sorted(members):
                tar.addfile(*_tar_member(name, members[name]))
            bar.update(1)


_WRITERS = {"parquet": _write_parquet, "webdataset": _write_tar}


# --------------------------------------------------------------------------------------------
# the dataset card


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def _size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bin of ``n`` rows."""
    bins = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
            (10_000_000, "1M<n<10M"))
    return next((label for limit, label in bins if n < limit), "n>10M")


def _yaml_header(fmt: str, info: Mapping[str, Any], listing: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    rows = {split: sum(e["rows"] for e in entries) for split, entries in listing.items()}
    lines = ["---", "license: mit", f"pretty_name: {_yaml_str('an8Flower ' + str(info['variant']))}",
             "task_categories:", "- image-classification",
             "tags:", *(f"- {t}" for t in ("explainability", "interpretability", "saliency", "synthetic", "an8flower")),
             "size_categories:", f"- {_size_category(sum(rows.values()))}",
             "configs:", "- config_name: default", "  data_files:"]
    for split, entries in listing.items():
        lines += [f"  - split: {split}", "    path:", *(f"    - {e['path']}" for e in entries)]
    if fmt == "parquet":
        lines += ["dataset_info:", "  features:"]
        for name, feature in hf_features(info["classes"]).items():
            lines.append(f"  - name: {name}")
            if feature["_type"] == "ClassLabel":
                lines += ["    dtype:", "      class_label:", "        names:"]
                lines += [f"          '{i}': {_yaml_str(c)}" for i, c in enumerate(feature["names"])]
            else:
                lines.append(f"    dtype: {'image' if feature['_type'] == 'Image' else feature['dtype']}")
        lines.append("  splits:")
        for split, entries in listing.items():
            lines += [f"  - name: {split}", f"    num_bytes: {sum(e['arrow_bytes'] for e in entries)}",
                      f"    num_examples: {rows[split]}"]
        lines += [f"  download_size: {sum(e['bytes'] for entries in listing.values() for e in entries)}",
                  f"  dataset_size: {sum(e['arrow_bytes'] for entries in listing.values() for e in entries)}"]
    return lines + ["---"]


_LOAD_PARQUET = '''\
```python
from datasets import load_dataset

ds = load_dataset("path/to/this/folder")            # the splits of `configs` above
row = ds["{split}"][0]
row["image"], row["mask"], row["parts"]             # PIL images: RGB, mode "1" (bool), mode "P" (part ids)
row["label"], ds["{split}"].features["label"].names  # ClassLabel
```'''

_LOAD_WEBDATASET = '''\
```python
import io
import webdataset as wds
from PIL import Image

def png(key, data):  # PNG members as stored: RGB image, mode "1" mask (bool), mode "P" part map (ids)
    return Image.open(io.BytesIO(data)) if key.endswith(".png") else None

for sample in wds.WebDataset({urls!r}, shardshuffle=False).decode(png):
    sample["image.png"], sample["mask.png"], sample["parts.png"], sample["__key__"]  # key = index
    sample["cls"], sample["json"]  # the label (int), the manifest row (dict)
```'''


def dataset_card(fmt: str, source: _Source, listing: Mapping[str, list[dict[str, Any]]]) -> str:
    """``README.md`` of an export: the Hugging Face YAML header, how to load it, its provenance,
    the citation and the source folder's data card.

    The header has ``license``, ``pretty_name``, ``task_categories``, ``tags``, ``size_categories``,
    ``configs`` (one ``data_files`` entry per split, listing its shards) and, for Parquet,
    ``dataset_info``: the features of :func:`hf_features`, each split's rows (``num_examples``,
    which ``datasets`` checks on loading) and Arrow bytes (``num_bytes``), the Parquet bytes
    (``download_size``).

    Args:
        fmt: ``"parquet"`` or ``"webdataset"``.
        source: the checked source folder.
        listing: per split, its shards in order (``path``, ``rows``, ``bytes`` and for Parquet
            ``arrow_bytes``).
    """
    from an8flower.cite import bibtex

    info = source.info
    first = next(iter(listing))
    load = (_LOAD_PARQUET.format(split=first) if fmt == "parquet"
            else _LOAD_WEBDATASET.format(urls=[e["path"] for e in listing[first]]))
    split_text = ", ".join(f"{s} {sum(e['rows'] for e in entries):,}" for s, entries in listing.items())
    lines = _yaml_header(fmt, info, listing) + [
        "",
        f"# an8Flower `{info['variant']}` ({info['size']} px, seed {info['seed']}), {fmt} export",
        "",
        f"Exported by `an8flower export --format {fmt}` (an8flower {__version__}) from a folder written by "
        f"`an8flower generate {info['variant']} --size {info['size']} --per-class {info['per_class']} "
        f"--seed {info['seed']}` (an8flower {info['an8flower_version']}). Rows: {split_text}.",
        "",
        load,
        "",
        "Columns: every column of the source `manifest.csv`; `image`, `mask` and `parts` hold the source's PNG "
        "files byte for byte (RGB; 1-bit, 1 = visible pixel of a discriminative part; palette, value = part id "
        f"= position in {list(info['parts'])}).",
        "",
        "| provenance | |",
        "|---|---|",
        f"| manifest sha256 | `{info['manifest_sha256']}` |",
        f"| content sha256 | `{info['content_sha256']}` |",
        f"| spec sha256 | `{info['spec_sha256']}` |",
        f"| file hashes | `{EXPORT_MANIFEST}` (each shard's sha256) |",
        "",
        "Regenerate the source with the command above and compare its `manifest.csv` hash, or check this "
        f"export against `{EXPORT_MANIFEST}`.",
        "",
        "## Citation",
        "",
        "```bibtex",
        bibtex(dataset=source.root).rstrip("\n"),
        "```",
        "",
    ]
    card = source.data_card()
    if card:
        lines += ["<!-- the source folder's data card follows -->", "", card.rstrip("\n"), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the output folder


def _check_out(out: Path, root: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that would clobber the source or an unrelated folder."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    real_out, real_root = os.path.realpath(out), os.path.realpath(root)
    if os.path.commonpath([real_out, real_root]) in (real_out, real_root):
        raise UsageError(f"--out {out}: must lie outside the dataset folder {root} and not contain it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out}: folder exists and is not empty (--overwrite replaces an earlier export)")
        try:
            ok = json.loads((out / EXPORT_MANIFEST).read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise UsageError(f"--out {out}: not an an8flower export (no {EXPORT_MANIFEST} of format {EXPORT_FORMAT}); "
                             "refusing to replace it")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _temp_sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _lock_path(tmp: Path) -> Path:
    """The lock an export holds on its temporary folder while it writes it (beside it, so that it
    outlives neither the folder's rename to ``OUT`` nor the process: ``flock`` ends with it)."""
    return tmp.with_name(tmp.name[:-len(".tmp")] + ".lock")


def remove_stale_temporaries(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary folders that killed exports to ``out`` left beside it.

    An export writes ``.OUT.export-PID-HEX.tmp`` while it holds an ``flock`` on
    ``.OUT.export-PID-HEX.lock`` (:mod:`an8flower.folderlock`); the kernel drops the lock when the
    process ends, even by ``SIGKILL``. A temporary folder whose lock can be taken is therefore one
    no running export writes (on this machine or, with NFS locks, another): it is removed, with
    its lock file. Folders of running exports are left alone.

    Returns:
        The folders removed.
    """
    from an8flower.folderlock import acquire

    out = Path(out)
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.export-\d+-[0-9a-f]{{8}}\.tmp$")
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return removed
    for name in names:
        tmp = out.parent / name
        if not pattern.match(name) or tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            lock = acquire(_lock_path(tmp), f"temporary folder {tmp}")
        except UsageError:  # a running export holds it (or the lock path is no plain lock file)
            continue
        with lock:
            shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _first_missing(path: Path) -> Path | None:
    """The highest ancestor of ``path`` (itself included) that does not exist, or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an empty folder or an earlier export."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = _temp_sibling(out, "old")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)


def _resolve_splits(splits: Iterable[str] | None) -> list[str]:
    if splits is None:
        return list(SPLITS)
    wanted = list(dict.fromkeys(splits))
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown or not wanted:
        raise UsageError(f"--split {','.join(unknown) or '(none)'}: expected all or one of {', '.join(SPLITS)}")
    return [s for s in SPLITS if s in wanted]


def export_dataset(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str = "parquet",
    splits: Iterable[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool | None = None,
) -> ExportResult:
    """Export a generated dataset folder to Parquet or WebDataset (see the module docstring).

    Args:
        root: the dataset folder (``an8flower generate``'s output).
        out: the export folder to create.
        format: ``"parquet"`` or ``"webdataset"``.
        splits: the splits to export (default all, in the order train, val, test).
        shard_size: at most this many rows per Parquet file or tar shard (>= 1).
        overwrite: replace ``out`` if it is an earlier an8flower export.
        progress: tqdm's ``disable`` convention inverted: None shows a bar on a terminal only.

    Returns:
        An :class:`ExportResult`.

    Raises:
        UsageError: unknown ``format`` or split, bad ``shard_size``, an ``out`` that is a file, not
            empty (without ``overwrite``), not an earlier export, or inside/around ``root``; or
            pyarrow missing for Parquet.
        DatasetNotFoundError / DatasetFormatError: ``root`` is not a complete dataset, its manifest
            does not match ``dataset.json``, a file is missing, changed or outside ``root``.
        DiskFullError: the disk filled up (nothing is left behind; the message says how much more
            space is needed).
    """
    if format not in FORMATS:
        raise UsageError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"--shard-size {shard_size!r}: must be an integer >= 1")
    wanted = _resolve_splits(splits)
    if format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install 'an8flower[export]'") from None
    root_p, out_p = Path(root), Path(out)
    source = _Source(root_p)
    _check_out(out_p, root_p, overwrite)
    shards = _plan_shards(source.rows, wanted, shard_size)
    if not shards:
        raise UsageError(f"--split {','.join(wanted)}: no rows in {source.manifest}")

    from an8flower.folderlock import acquire

    created = _first_missing(out_p.parent)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_p)
    tmp = _temp_sibling(out_p, "export")
    lock = acquire(_lock_path(tmp), f"temporary folder {tmp}")

    def export_bytes() -> int:  # after a full disk (the temporary folder is gone): the whole export
        return sum(_size(source.paths[r.index, k]) + _ROW_BYTES for sh in shards for r in sh.rows
                   for k in KINDS) + _CARD_BYTES

    with lock, reporting_disk_full(out_p, export_bytes):
        return _write_export(source, shards, format, shard_size, out_p, tmp, created, progress)


def _write_export(source: _Source, shards: Sequence[_Shard], format: str, shard_size: int, out_p: Path, tmp: Path,
                  created: Path | None, progress: bool | None) -> ExportResult:
    """Write the shards, the card and ``manifest.json`` into ``tmp``, then publish it as ``out_p``."""
    from tqdm import tqdm

    try:
        (tmp / "data").mkdir(parents=True) if format == "parquet" else tmp.mkdir()
        listing: dict[str, list[dict[str, Any]]] = {}
        disable = None if progress is None else not progress
        with tqdm(total=sum(len(sh.rows) for sh in shards), unit="row", desc=f"export {format}", disable=disable) as bar:
            for shard in shards:
                name = _shard_name(format, shard)
                arrow_bytes = _WRITERS[format](tmp / name, shard, source, bar)
                entry = {"path": name, "rows": len(shard.rows), "first_index": shard.rows[0].index,
                         "last_index": shard.rows[-1].index, "bytes": (tmp / name).stat().st_size,
                         "sha256": sha256_file(tmp / name)}
                if arrow_bytes is not None:
                    entry["arrow_bytes"] = arrow_bytes
                listing.setdefault(shard.split, []).append(entry)
        card = dataset_card(format, source, listing).encode("utf-8")
        (tmp / CARD_NAME).write_bytes(card)
        files = {e["path"]: e["sha256"] for entries in listing.values() for e in entries}
        files[CARD_NAME] = sha256_bytes(card)
        rows = {split: sum(e["rows"] for e in entries) for split, entries in listing.items()}
        manifest = canonical_json({
            "format": EXPORT_FORMAT,
            "export_format": format,
            "source": provenance(source.info),
            "dataset": source.info,
            "settings": _settings(format, shard_size),
            "splits": {split: {"rows": rows[split], "shards": entries} for split, entries in listing.items()},
            "card": {"path": CARD_NAME, "sha256": files[CARD_NAME]},
        }).encode("utf-8")
        (tmp / EXPORT_MANIFEST).write_bytes(manifest)
        _publish(tmp, out_p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return ExportResult(out=out_p, format=format, rows=rows, files=dict(sorted(files.items())),
                        manifest_sha256=sha256_bytes(manifest))


def _settings(fmt: str, shard_size: int) -> dict[str, Any]:
    """The options that, with the source and the library versions, fix an export's bytes."""
    settings: dict[str, Any] = {"shard_size": shard_size}
    if fmt == "parquet":
        import pyarrow

        codec, level = PARQUET_COMPRESSION
        settings.update(row_group_size=PARQUET_ROW_GROUP_SIZE, compression=codec, compression_level=level,
                        pyarrow_version=pyarrow.__version__)
    else:
        settings.update(tar_format="ustar", key_digits=_KEY_DIGITS)
    return settings
