"""Check that a dataset folder is exactly what ``an8flower generate`` writes.

:func:`verify_dataset` (the ``an8flower verify`` command) trusts nothing in the folder: every fact
is recomputed from ``dataset.json``'s own ``spec``, ``seed`` and ``per_class`` and compared.

1. ``dataset.json``: the spec parses and hashes to ``spec_sha256``; every entry that follows from
   (spec, seed, per_class) equals what :func:`an8flower.layout.dataset_plan` gives (variant,
   size, split sizes and index ranges, classes and their folders, parts, sample and class counts,
   layout, file names);
2. ``manifest.csv``: its SHA-256 is ``manifest_sha256``, its content hash ``content_sha256``; it
   holds one row per sample index ``0 .. K*N - 1``, and each row's split, class, label and three
   file names are those of the index plan (label = index mod K, split from the index), its
   sampled parameters name the same index, seed, size, label and class;
3. the data card and ``croissant.json``: their SHA-256 are the recorded ones and (when the folder
   was written by this an8flower version) their bytes are those generate writes;
4. every file the manifest names: its path stays inside the folder and passes through no symbolic
   link, it is a regular file no larger than a PNG of that size can be (checked before reading),
   its bytes hash to the row's SHA-256 and its PNG header gives the size ``dataset.json`` says (or,
   with ``pixels=True``, its decoded pixels hash to the row's pixel hash);
5. a few samples are rendered again (by default the first of each class in each split: ``3 K``
   renders) and must give the row's pixel hashes and sampled parameters, and the files' decoded
   pixels: this catches a seed or spec edited consistently everywhere, or a file replaced along
   with its byte hash. Skipped, with a note, when the folder was written by other renderer code
   (``code_sha256``);
6. nothing else lies in the folder: every file generate would not write, every folder that holds
   none of its files (an empty one too) and every symbolic link is listed as ``extra`` (a linked
   class folder would make torchvision's ``ImageFolder`` see one more class and shift the labels).

Every file is read within a bound its format allows (``dataset.json``, the manifest by its row
count, the documents, each PNG by its size), as a regular file, never through a final symbolic
link; the data card and ``croissant.json`` are read under the layout's names, never a path
``dataset.json`` gives.

What it cannot see without rendering: a sample file replaced together with every hash that covers
it (its manifest row, the manifest hash, ``croissant.json`` and its hash) is a self-consistent
folder; only the samples rendered again tell it apart. ``render="all"`` (``--render all``) renders
every sample and so proves every pixel, at the cost of generating the dataset again.

:func:`open_dataset` runs the cheap part (1 and 2, no file but ``dataset.json`` and the manifest
read, :func:`check_dataset`) for the loaders and ``show``; ``export`` runs the same
:func:`check_dataset`. :func:`read_sample_file` is how the loaders, ``export`` and ``show`` read a
sample file: inside the folder, no link, bounded, hash (optionally) and PNG size checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from an8flower import __version__
from an8flower.errors import DatasetFormatError, DatasetNotFoundError, SpecError, UsageError
from an8flower.layout import (
    CROISSANT_NAME,
    DATACARD_NAME,
    DATASET_JSON,
    KIND_FOLDERS,
    KINDS,
    MANIFEST_NAME,
    MAX_SAMPLES,
    SPLITS,
    class_folder,
)
from an8flower.manifest import (
    DOCUMENT_MAX_BYTES,
    MANIFEST_ROW_MAX_BYTES,
    ManifestRow,
    content_sha256,
    decode_png,
    pixel_sha256,
    read_dataset_json,
    read_manifest,
    sha256_bytes,
)
from an8flower.png import max_png_bytes, png_size
from an8flower.spec import MAX_SIZE, VariantSpec, check_seed
from an8flower.untrusted import SAMPLE_MAX_PIXELS, check_image_header, read_bounded, resolve_inside

__all__ = ["VerifyReport", "verify_dataset", "plan_problems", "row_problems", "read_dataset", "dataset_problems",
           "check_dataset", "open_dataset", "read_sample_file", "MAX_ROW_LINES"]

#: Rows named one by one in a report before the rest are counted in one line.
MAX_ROW_LINES = 50
#: Entries of ``dataset.json`` that generate does not derive from (spec, seed, per_class).
_RECORDED = ("an8flower_version", "code_sha256", "png_encoder", "manifest_sha256", "content_sha256",
             "data_card_sha256", "croissant_sha256")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_problems(info: dict[str, Any]) -> tuple[VariantSpec | None, list[str]]:
    """Check ``dataset.json`` against what generate writes for its own spec, seed and per_class.

    Returns:
        ``(spec, problems)``: the parsed spec (None when it does not parse or seed / per_class are
        invalid) and one line per entry that differs, e.g.
        ``"dataset.json: num_samples 17 (generate writes 18 for this spec, seed and per_class)"``.
    """
    from an8flower.layout import check_counts, dataset_plan

    try:
        spec = VariantSpec.from_dict(info.get("spec"))
    except SpecError as exc:
        return None, [f"{DATASET_JSON}: spec: {exc}"]
    per_class: Any = info.get("per_class")  # untrusted: check_counts raises UsageError unless an int in range
    try:
        seed = check_seed(info.get("seed"))
    except UsageError as exc:
        return None, [f"{DATASET_JSON}: {exc}"]
    try:
        check_counts(spec.num_classes, per_class)
        expected = dataset_plan(spec, seed, per_class)
    except UsageError as exc:
        return None, [f"{DATASET_JSON}: per_class: {exc}"]
    problems = [f"{DATASET_JSON}: {key} {_short(info.get(key))} (generate writes {_short(value)} for this spec, "
                "seed and per_class)" for key, value in expected.items() if info.get(key) != value]
    problems += [f"{DATASET_JSON}: {key} missing" for key in _RECORDED if key not in info]
    problems += [f"{DATASET_JSON}: unknown entry {key}" for key in sorted(set(info) - set(expected) - set(_RECORDED))]
    return spec, problems


def row_problems(spec: VariantSpec, info: dict[str, Any], rows: Sequence[ManifestRow]) -> list[str]:
    """Check manifest rows against the index plan of ``info`` (see the module docstring, step 2).

    Returns:
        One line per row that differs, naming the sample and the field (at most
        :data:`MAX_ROW_LINES`, then a count of the others), and one per missing or repeated index.
    """
    from an8flower.layout import IndexPlan, expected_row

    plan = IndexPlan(spec.num_classes, info["per_class"])
    problems: list[str] = []
    seen: set[int] = set()
    for r in rows:
        where = f"{MANIFEST_NAME}, sample {r.index}"
        if r.index in seen:
            problems.append(f"{where}: a second row for this index")
            continue
        seen.add(r.index)
        if not 0 <= r.index < plan.total:
            problems.append(f"{where}: index outside the plan's 0..{plan.total - 1}")
            continue
        want = expected_row(spec, plan, r.index)
        got = {"split": r.split, "class": r.class_name, "label": r.label}
        diffs = [f"{k} {got[k]!r} (plan: {want[k]!r})" for k in got if got[k] != want[k]]
        diffs += [f"{k} file {r.files[k]!r} (plan: {want['files'][k]!r})" for k in KINDS
                  if r.files[k] != want["files"][k]]
        meta_want = {"index": r.index, "seed": info["seed"], "size": spec.size, "label": want["label"],
                     "class": want["class"]}
        diffs += [f"meta {k} {_short(r.meta.get(k))} (plan: {v!r})" for k, v in meta_want.items() if r.meta.get(k) != v]
        if diffs:
            problems.append(f"{where}: {'; '.join(diffs)}")
    absent = sorted(set(range(plan.total)) - seen)
    if absent:
        shown = ", ".join(map(str, absent[:20])) + (f" and {len(absent) - 20} more" if len(absent) > 20 else "")
        problems.append(f"{MANIFEST_NAME}: no row for sample(s) {shown}")
    if len(problems) > MAX_ROW_LINES:
        problems = problems[:MAX_ROW_LINES] + [f"{MANIFEST_NAME}: ... and {len(problems) - MAX_ROW_LINES} more"]
    return problems


def read_dataset(root: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes, list[ManifestRow]]:
    """``dataset.json`` and the manifest of a folder, read within their bounds, not checked yet.

    The manifest may hold at most as many rows as ``dataset.json``'s ``num_samples`` says (and
    :data:`an8flower.layout.MAX_SAMPLES`), each :data:`an8flower.manifest.MANIFEST_ROW_MAX_BYTES`
    on average; it must be a regular file (not a link, not ``/dev/zero``).

    Returns:
        ``(info, manifest bytes, rows)``.

    Raises:
        DatasetNotFoundError: no dataset there, or no manifest. DatasetFormatError: naming the
            file, the line and the field.
    """
    root = Path(root)
    info = read_dataset_json(root)
    max_rows = _max_rows(info)
    path = root / MANIFEST_NAME
    data = read_bounded(path, (max_rows + 1) * MANIFEST_ROW_MAX_BYTES, "manifest")
    return info, data, read_manifest(path, data, max_rows=max_rows)


def dataset_problems(info: dict[str, Any], data: bytes,
                     rows: Sequence[ManifestRow]) -> tuple[VariantSpec | None, list[str]]:
    """Every check of a folder's ``dataset.json`` and manifest against the index plan (steps 1, 2).

    ``dataset.json`` against what generate writes for its spec, seed and per-class
    (:func:`plan_problems`); the manifest's bytes against ``manifest_sha256`` and its rows against
    ``content_sha256``; each row against the plan (:func:`row_problems`). The one function the
    loaders (:func:`open_dataset`) and ``export`` apply, so a resealed folder that one refuses the
    other refuses too.

    Returns:
        ``(spec, problems)``: the parsed spec (None when ``dataset.json``'s does not parse) and one
        line per problem.
    """
    spec, problems = plan_problems(info)
    if sha256_bytes(data) != info.get("manifest_sha256"):
        problems.append(f"{MANIFEST_NAME}: sha256 differs from {DATASET_JSON}'s manifest_sha256")
    if content_sha256(rows) != info.get("content_sha256"):
        problems.append(f"{MANIFEST_NAME}: content sha256 differs from {DATASET_JSON}'s content_sha256")
    if spec is not None:
        problems += row_problems(spec, info, rows)
    return spec, problems


def check_dataset(root: str | os.PathLike[str], info: dict[str, Any], data: bytes,
                  rows: Sequence[ManifestRow]) -> VariantSpec:
    """:func:`dataset_problems`, raised as one error; returns the spec.

    Raises:
        DatasetFormatError: naming the first few problems and pointing to ``an8flower verify``.
    """
    spec, problems = dataset_problems(info, data, rows)
    if problems or spec is None:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DatasetFormatError(f"{root}: not the dataset generate writes: {'; '.join(problems[:3])}{more}; "
                                 f"run `an8flower verify {root}` for the full list")
    return spec


def open_dataset(root: str | os.PathLike[str]) -> tuple[dict[str, Any], VariantSpec, list[ManifestRow]]:
    """Read a dataset folder's ``dataset.json`` and manifest and check them (steps 1 and 2).

    Cheap: it reads two files and hashes the manifest, nothing else. Used by the loaders and
    ``show``; ``export`` runs the same :func:`check_dataset`.

    Returns:
        ``(info, spec, rows)``.

    Raises:
        DatasetNotFoundError: no dataset there. DatasetFormatError: any inconsistency, naming the
            first few and pointing to ``an8flower verify``.
    """
    info, data, rows = read_dataset(root)
    return info, check_dataset(root, info, data, rows), rows


def read_sample_file(root: str | os.PathLike[str], row: ManifestRow, kind: str, size: int, *,
                     check_hash: bool = True) -> tuple[str, bytes]:
    """The bytes of a sample file, after the checks every reader of a dataset folder applies.

    1. its manifest path stays inside ``root`` and passes through no symbolic link
       (:func:`an8flower.untrusted.resolve_inside` with ``links=False``);
    2. it is a regular file of at most :func:`an8flower.png.max_png_bytes` bytes for ``size``,
       checked with ``fstat`` before anything is read (:func:`an8flower.untrusted.read_bounded`);
    3. with ``check_hash``, its SHA-256 is the row's ``<kind>_sha256``;
    4. its image header says ``size`` x ``size`` (:func:`an8flower.untrusted.check_image_header`,
       the header check :func:`an8flower.png.decode_png` makes; nothing is decoded here).

    The loaders (:class:`an8flower.An8Flower`), ``export``, ``show`` and ``verify`` read sample
    files through it.

    Returns:
        ``(path, bytes)``.

    Raises:
        DatasetNotFoundError: the file is missing. DatasetFormatError: naming the file, the sample
            and what failed.
    """
    where = f"{MANIFEST_NAME}, sample {row.index}, column {kind}"
    path = resolve_inside(root, row.files[kind], where, links=False)
    data = read_bounded(path, max_png_bytes(kind, size), f"{kind} file of sample {row.index}")
    if check_hash and sha256_bytes(data) != row.sha256[kind]:
        raise DatasetFormatError(f"{path}: SHA-256 differs from the manifest's {kind}_sha256 (sample {row.index})")
    check_image_header(data, SAMPLE_MAX_PIXELS, (size, size), name=path)
    return path, data


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found. Paths are relative to the dataset folder.

    Attributes:
        inconsistent: facts of ``dataset.json`` / the manifest that differ from what generate
            writes (one line each, naming the entry or the row and field).
        missing, changed, extra: files.
        checked: files hashed. rendered: samples rendered again and compared.
        notes: checks that were skipped, and why (they do not fail the report).
    """

    root: str
    checked: int = 0
    rendered: int = 0
    inconsistent: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.inconsistent or self.missing or self.changed or self.extra)

    def lines(self) -> list[str]:
        """One line per problem: ``inconsistent: ...``, ``missing: PATH``, ``changed: PATH (...)``,
        ``extra: PATH``."""
        return ([f"inconsistent: {p}" for p in self.inconsistent] + [f"missing: {p}" for p in self.missing]
                + [f"changed: {p}" for p in self.changed] + [f"extra: {p}" for p in self.extra])


def _max_rows(info: dict[str, Any]) -> int:
    """The most manifest rows to read: ``num_samples`` when it is a valid count, else :data:`MAX_SAMPLES`."""
    n = info.get("num_samples")
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_SAMPLES else MAX_SAMPLES


def _extra_entries(root: Path, expected: set[str], spec: VariantSpec | None) -> list[str]:
    """Every entry under ``root`` that generate would not write, in walk order: files not in
    ``expected``, folders that are neither a sample folder of ``spec``'s layout nor hold an
    ``expected`` file (empty ones too, listed once with a trailing ``/``, not descended into) and
    every symbolic link, to a file or a folder (never followed; the line says where it points)."""
    folders = {"/".join(p.split("/")[:i]) for p in expected for i in range(1, p.count("/") + 1)}
    if spec is not None:
        folders |= {f"{KIND_FOLDERS[k]}/{s}/{class_folder(spec, c)}" for k in KINDS for s in SPLITS
                    for c in range(spec.num_classes)}
        folders |= {f"{KIND_FOLDERS[k]}/{s}" for k in KINDS for s in SPLITS} | set(KIND_FOLDERS.values())
    extra = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keep = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                extra.append(f"{prefix}{name} (symbolic link to {os.readlink(full)})")
            elif prefix + name not in folders:
                extra.append(f"{prefix}{name}/")
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                extra.append(f"{prefix}{name} (symbolic link to {os.readlink(full)})")
            elif prefix + name not in expected:
                extra.append(prefix + name)
    return extra


def _render_indices(spec: VariantSpec, per_class: int, render: int | str | None) -> list[int]:
    """The samples verify renders again: ``"all"``, the first ``render`` of the plan's spread, or
    by default (None) the first sample of each class in each split."""
    from an8flower.layout import IndexPlan

    plan = IndexPlan(spec.num_classes, per_class)
    if render == "all":
        return list(range(plan.total))
    spread = [i for s in SPLITS for i in plan.split_range(s)[:spec.num_classes]]
    return spread if render is None else spread[:int(render)]


def verify_dataset(root: str | os.PathLike[str], pixels: bool = False, progress: bool | None = None,
                   render: int | str | None = None) -> VerifyReport:
    """Check a dataset folder against what generate writes (see the module docstring).

    Args:
        root: the dataset folder.
        pixels: compare the decoded pixel hashes (``<kind>_pixels_sha256``) instead of the file
            bytes: the check to use on a copy regenerated on another machine, whose zlib may
            compress differently. Slower (decodes every PNG).
        progress: tqdm's ``disable`` convention inverted: None shows a bar on a terminal only.
        render: samples to render again and compare: None (default) the first of each class in
            each split, an integer ``n`` the first ``n`` of those, 0 none, ``"all"`` every sample
            (as slow as generating the dataset).

    Returns:
        A :class:`VerifyReport`; ``changed`` also lists ``manifest.csv`` when its hashes differ
        from ``dataset.json``'s, and the data card and ``croissant.json`` when they differ from
        their recorded hashes or from what generate writes; ``extra`` lists every file in the
        folder that the manifest does not name (left-over temporary and lock files included).

    Raises:
        DatasetNotFoundError / DatasetFormatError: ``root`` is not a dataset folder (no or
            unreadable ``dataset.json``, a manifest that does not parse).
        UsageError: a bad ``render``.
    """
    from tqdm import tqdm

    if not (render is None or render == "all" or (isinstance(render, int) and not isinstance(render, bool)
                                                   and render >= 0)):
        raise UsageError(f"render {render!r}: expected an integer >= 0 or 'all'")
    root_p = Path(root)
    info = read_dataset_json(root_p)
    report = VerifyReport(root=str(root_p))
    spec, problems = plan_problems(info)
    report.inconsistent += problems
    manifest_path = root_p / MANIFEST_NAME
    expected: set[str] = {DATASET_JSON, MANIFEST_NAME}
    rows: list[ManifestRow] = []
    if not os.path.lexists(manifest_path):
        report.missing.append(MANIFEST_NAME)
    else:
        max_rows = _max_rows(info)
        data = read_bounded(manifest_path, (max_rows + 1) * MANIFEST_ROW_MAX_BYTES, "manifest")
        rows = read_manifest(manifest_path, data, max_rows=max_rows)
        if sha256_bytes(data) != info.get("manifest_sha256"):
            report.changed.append(f"{MANIFEST_NAME} (sha256 differs from {DATASET_JSON})")
        if content_sha256(rows) != info.get("content_sha256"):
            report.changed.append(f"{MANIFEST_NAME} (content sha256 differs from {DATASET_JSON})")
        if spec is not None:
            report.inconsistent += row_problems(spec, info, rows)
    _check_documents(root_p, info, spec, report, expected)

    size = spec.size if spec is not None else None
    disable = None if progress is None else not progress
    bar = tqdm(total=len(rows) * len(KINDS), unit="file", desc="verify", disable=disable)
    for row in rows:
        for kind in KINDS:
            rel = row.files[kind]
            bar.update(1)
            try:
                path = resolve_inside(root_p, rel, f"{MANIFEST_NAME}, sample {row.index}, column {kind}", links=False)
            except DatasetFormatError as exc:
                report.inconsistent.append(str(exc))
                continue
            expected.add(rel)
            report.checked += 1
            try:
                data = read_bounded(path, max_png_bytes(kind, size or MAX_SIZE), "sample file")
            except DatasetNotFoundError:
                report.missing.append(rel)
                continue
            except DatasetFormatError as exc:  # a link, a device, a file larger than such a PNG can be
                report.changed.append(f"{rel} ({str(exc).split(': ', 1)[-1]})")
                continue
            if pixels:
                try:
                    ok = pixel_sha256(decode_png(data, kind, size=size, name=path)) == row.pixels_sha256[kind]
                except DatasetFormatError:  # an undecodable or wrongly sized file is a changed file
                    ok = False
                if not ok:
                    report.changed.append(rel)
                continue
            if sha256_bytes(data) != row.sha256[kind]:
                report.changed.append(rel)
            elif size is not None and png_size(data) != (size, size):
                found = png_size(data)
                report.changed.append(f"{rel} ({'not a PNG' if found is None else f'{found[0]}x{found[1]}'}, "
                                      f"{DATASET_JSON} says {size}x{size})")
    bar.close()
    if spec is not None and render != 0:
        _check_rendering(root_p, spec, info, rows, render, report)
    report.extra.extend(_extra_entries(root_p, expected, spec))
    return report


def _check_documents(root: Path, info: dict[str, Any], spec: VariantSpec | None, report: VerifyReport,
                     expected: set[str]) -> None:
    """Step 3: the data card and croissant.json against their hashes and generate's bytes."""
    from an8flower.datacard import dataset_documents

    regenerated: dict[str, bytes] = {}
    same_version = info.get("an8flower_version") == __version__
    if spec is not None and same_version and isinstance(info.get("manifest_sha256"), str):
        regenerated = dataset_documents(spec, info["seed"], info["per_class"], info["manifest_sha256"])
    elif spec is not None:
        report.notes.append(f"data card and croissant.json not regenerated: written by an8flower "
                            f"{info.get('an8flower_version')}, this is {__version__}")
    for key, name in (("data_card", DATACARD_NAME), ("croissant", CROISSANT_NAME)):
        # the layout's names, never dataset.json's (which plan_problems compares with them): a
        # dataset.json naming another path must not make verify open a file outside the folder
        expected.add(name)
        path = root / name
        if not os.path.lexists(path):
            report.missing.append(name)
            continue
        try:
            content = read_bounded(path, DOCUMENT_MAX_BYTES, key.replace("_", " "))
        except DatasetFormatError as exc:
            report.changed.append(f"{name} ({str(exc).split(': ', 1)[-1]})")
            continue
        if sha256_bytes(content) != info.get(f"{key}_sha256"):
            report.changed.append(name)
        elif name in regenerated and content != regenerated[name]:
            report.changed.append(f"{name} (differs from what generate writes for this dataset)")


def _check_rendering(root: Path, spec: VariantSpec, info: dict[str, Any], rows: Sequence[ManifestRow],
                     render: int | str | None, report: VerifyReport) -> None:
    """Step 5: render samples again; compare them with the manifest's pixel hashes and sampled
    parameters, and with the files' decoded pixels."""
    from an8flower.layout import code_sha256
    from an8flower.render import render as render_sample

    if info.get("code_sha256") != code_sha256():
        report.notes.append("samples not rendered again: the folder was written by other renderer code "
                            f"(code_sha256 {str(info.get('code_sha256'))[:12]}..., this is {code_sha256()[:12]}...)")
        return
    by_index = {r.index: r for r in rows}
    for index in _render_indices(spec, info["per_class"], render):
        row = by_index.get(index)
        if row is None:
            continue
        sample = render_sample(spec, info["seed"], index)
        report.rendered += 1
        arrays = {"image": sample.image, "mask": sample.mask, "parts": sample.parts}
        rendered = {k: pixel_sha256(arrays[k]) for k in KINDS}
        diffs = [f"{k} pixels" for k in KINDS if rendered[k] != row.pixels_sha256[k]]
        if json.loads(json.dumps(sample.meta)) != row.meta:
            diffs.append("sampled parameters (meta)")
        if diffs:
            report.inconsistent.append(f"{MANIFEST_NAME}, sample {index}: {', '.join(diffs)} differ from the sample "
                                       f"rendered again from dataset.json's spec and seed {info['seed']}")
        for k in KINDS:  # the files themselves, decoded (a file may differ from a consistent manifest)
            try:
                path = resolve_inside(root, row.files[k], f"{MANIFEST_NAME}, sample {index}, column {k}")
                same = pixel_sha256(decode_png(path, k, size=spec.size)) == rendered[k]
            except (DatasetFormatError, DatasetNotFoundError):
                continue  # already reported by the file checks
            if not same:
                report.changed.append(f"{row.files[k]} (pixels differ from the sample rendered again)")
