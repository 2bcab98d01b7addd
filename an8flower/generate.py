"""Generate an an8Flower dataset folder: the writer (worker pool, shards, locks, resume).

The layout it writes (file names, index plan, splits, class folders, bounds) is
:mod:`an8flower.layout`, which every reader shares.

**Chunks, workers, shards.** The index range is cut into chunks of :func:`chunk_size` indices.
Each chunk is rendered, PNG-encoded and written by one worker process; when all its files are in
place the worker writes the chunk's manifest rows to ``.an8flower-work/rows/chunk-NNNNNN.json``,
which marks the chunk complete. ``--shard I/N`` (1-based) renders the chunks ``c`` with
``c % N == I - 1``. When every chunk is complete, whichever process notices first (the last shard
to finish, or a plain ``generate`` call) writes ``manifest.csv``, the data card and, last,
``dataset.json``, then removes ``.an8flower-work``. The result is the same bytes whatever the
worker count or sharding: each file is a function of (spec, seed, index) and the manifest is
sorted by index.

**Locks and bounds.** A run locks its folder (:func:`generate`, :mod:`an8flower.folderlock`): an
unsharded run exclusively, a shard shared plus its own shard lock, so a second run on a folder in
use is refused naming the process, and the shard that completes a dataset waits for the others
before it writes the manifest. Worker processes exit when the process that started them dies.
``per_class`` is at most :data:`an8flower.layout.MAX_PER_CLASS` (:data:`~an8flower.layout.MAX_SAMPLES` samples in all) and the output
size is estimated (:func:`estimate_dataset_bytes`) and checked against :data:`MAX_OUTPUT_BYTES` and
the free disk space before anything is written.

**Resume.** Every file is written atomically (temporary name, then :func:`os.replace`), so a file
that exists is whole. Re-running the same command skips the chunks whose row file exists and whose
files all exist, and re-renders the others. The parameters (version, renderer code, spec
hash, seed, size, samples per class; :func:`an8flower.layout.code_sha256`) are kept in ``.an8flower-work/plan.json``; a resume or shard
with other parameters is refused rather than mixing two datasets; left-over temporary files of killed workers are
removed when the dataset is finalised. A folder holding ``dataset.json`` is complete; a folder
holding ``.an8flower-work`` but no ``dataset.json`` is an unfinished generation.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from an8flower import __version__
from an8flower.atomic import DISK_FULL_ERRNOS, check_free_space, format_bytes, reporting_disk_full
from an8flower.datacard import dataset_documents
from an8flower.errors import An8FlowerError, DatasetFormatError, DatasetNotFoundError, SpecError, UsageError
from an8flower.folderlock import Lock, acquire, check_lock_path, holder_text, read_holder
from an8flower.layout import (
    CROISSANT_NAME,
    DATACARD_NAME,
    DATASET_JSON,
    DEFAULT_PER_CLASS,
    FORMAT,
    KIND_FOLDERS,
    KINDS,
    LOCK_NAME,
    MANIFEST_NAME,
    SPLITS,
    WORK_DIR,
    IndexPlan,
    check_counts,
    class_folder,
    code_sha256,
    dataset_plan,
    expected_row,
    parse_shard,
    sample_paths,
)
from an8flower.manifest import (
    DATASET_JSON_MAX_BYTES,
    MANIFEST_ROW_MAX_BYTES,
    ManifestRow,
    atomic_write_bytes,
    atomic_write_text,
    canonical_json,
    content_sha256,
    encode_png,
    is_temp_name,
    manifest_bytes,
    pixel_sha256,
    png_encoder_info,
    sha256_bytes,
)
from an8flower.spec import VariantSpec, check_seed, resolve_spec
from an8flower.untrusted import parse_json, read_bounded

__all__ = [
    "MAX_OUTPUT_BYTES",
    "PNG_BYTES_PER_PIXEL",
    "MANIFEST_BYTES_PER_SAMPLE",
    "DOCUMENT_BYTES",
    "estimate_dataset_bytes",
    "chunk_size",
    "default_workers",
    "GenerateResult",
    "generate",
]

#: Largest estimated size (:func:`estimate_dataset_bytes`) of a folder ``generate`` writes: 100 GB,
#: 85 times the default ``double-12c`` (e.g. ``double-12c`` at 512 px with 20,000 per class is
#: refused, at 120 GB).
MAX_OUTPUT_BYTES = 100 * 10**9
#: Bytes per pixel of a sample's three PNG files (image + mask + part map), averaged over a
#: dataset, an upper estimate: the largest mean measured over both built-in variants at 64, 112,
#: 224 and 512 px was 1.51 (double-12c at 64 px; 0.76 at 224 px, 0.43 at 512 px), raised by a
#: quarter as a margin. Uncompressed, a sample takes 4.125 bytes per pixel.
PNG_BYTES_PER_PIXEL = 1.9
#: Bytes per sample of ``manifest.csv`` (the row, mostly its sampled parameters), an upper bound.
MANIFEST_BYTES_PER_SAMPLE = 2048
#: Bytes of ``dataset.json``, the data card and ``croissant.json`` together, an upper bound.
DOCUMENT_BYTES = 100_000


def estimate_dataset_bytes(spec: VariantSpec, per_class: int, size: int | None = None) -> int:
    """An upper estimate of the bytes ``generate`` writes for ``spec`` at ``per_class``.

    ``K * N * (s^2 * PNG_BYTES_PER_PIXEL + MANIFEST_BYTES_PER_SAMPLE) + DOCUMENT_BYTES`` for
    ``K`` classes, ``N`` per class and side ``s`` (default ``spec.size``): e.g. 1.17 GB for 12,000
    samples at 224 px (``double-12c`` at the default size; the folder takes about 0.5 GB). The
    leaderboard's in-memory datasets can bound themselves with it too.

    Raises:
        UsageError: bad ``per_class`` (see :func:`an8flower.layout.check_counts`).
    """
    total = check_counts(spec.num_classes, per_class)
    side = spec.size if size is None else size
    return int(total * (side * side * PNG_BYTES_PER_PIXEL + MANIFEST_BYTES_PER_SAMPLE)) + DOCUMENT_BYTES


def _check_output_size(spec: VariantSpec, per_class: int, out: Path, fraction: float) -> None:
    """Refuse a dataset whose estimated size is absurd or does not fit the free disk space.

    The free space is compared with the share ``fraction`` still to write counted in whole blocks
    (:func:`an8flower.atomic.check_free_space`): three files per sample, a row file per chunk, the
    folders and the documents, each rounded up to the file system's block.

    Raises:
        UsageError: giving the estimate, when above :data:`MAX_OUTPUT_BYTES`.
        DiskFullError: (a UsageError) when it does not fit the free space there.
    """
    estimate = estimate_dataset_bytes(spec, per_class)
    total = spec.num_classes * per_class
    what = f"{total:,} images of {spec.size} px"
    if estimate > MAX_OUTPUT_BYTES:
        raise UsageError(f"per-class {per_class}: {what} would take about {format_bytes(estimate)}, more than "
                         f"the {format_bytes(MAX_OUTPUT_BYTES)} limit")
    folders = len(KINDS) * (1 + len(SPLITS) * (1 + spec.num_classes)) + 3
    files = math.ceil((len(KINDS) * total + math.ceil(total / chunk_size(total))) * fraction) + folders + 6
    check_free_space(out, int(estimate * fraction), files, f"output folder {out}: {what}")


def chunk_size(total: int) -> int:
    """Indices per chunk: about 64 chunks for small datasets, at most 32 indices per chunk."""
    return max(1, min(32, math.ceil(total / 64)))


# --------------------------------------------------------------------------------------------
# workers


class _ChunkWriter:
    """Renders, encodes and writes the chunks of one dataset (picklable; one per worker)."""

    def __init__(self, spec: VariantSpec, seed: int, per_class: int, root: str, chunk: int) -> None:
        self.spec, self.seed, self.root, self.chunk = spec, seed, root, chunk
        self.plan = IndexPlan(spec.num_classes, per_class)

    def indices(self, chunk_id: int) -> range:
        return range(chunk_id * self.chunk, min((chunk_id + 1) * self.chunk, self.plan.total))

    def journal(self, chunk_id: int) -> str:
        return os.path.join(self.root, WORK_DIR, "rows", f"chunk-{chunk_id:06d}.json")

    def __call__(self, chunk_id: int) -> int:
        from an8flower.render import render

        records = []
        for index in self.indices(chunk_id):
            sample = render(self.spec, self.seed, index)
            label = self.plan.class_of(index)
            if sample.label != label:
                raise RuntimeError(f"renderer gave label {sample.label} to sample {index}; the plan says {label}")
            split = self.plan.split_of(index)
            files = sample_paths(self.spec, index, split, label)
            sha, pix = {}, {}
            for kind, array in (("image", sample.image), ("mask", sample.mask), ("parts", sample.parts)):
                data = encode_png(array, kind)
                atomic_write_bytes(os.path.join(self.root, files[kind]), data)
                sha[kind] = sha256_bytes(data)
                pix[kind] = pixel_sha256(array)
            row = ManifestRow(index, split, self.spec.classes[label], label, files, sha, pix, sample.meta)
            records.append(row.to_record())
        atomic_write_text(self.journal(chunk_id), json.dumps(records, sort_keys=True))
        return len(records)

    def read_journal(self, chunk_id: int) -> list[Any]:
        """The chunk's row records, read within the bound of a chunk's rows (the work folder may
        come from elsewhere: a shard folder on a shared disk).

        Raises:
            DatasetNotFoundError / DatasetFormatError: missing, not a regular file, too large,
                not a JSON list.
        """
        path = self.journal(chunk_id)
        limit = (self.chunk + 1) * MANIFEST_ROW_MAX_BYTES
        records = parse_json(read_bounded(path, limit, "chunk row file"), path)
        if not isinstance(records, list):
            raise DatasetFormatError(f"{path}: expected a JSON list of rows")
        return records

    def is_complete(self, chunk_id: int) -> bool:
        """Whether the chunk's row file exists, lists the chunk's indices and all its files exist."""
        try:
            records = self.read_journal(chunk_id)
            if [int(r["index"]) for r in records] != list(self.indices(chunk_id)):
                return False
            expected = [expected_row(self.spec, self.plan, i)["files"] for i in self.indices(chunk_id)]
            if any(r[k] != files[k] for r, files in zip(records, expected, strict=True) for k in KINDS):
                return False
            return all(os.path.isfile(os.path.join(self.root, r[k])) for r in records for k in KINDS)
        except (OSError, ValueError, KeyError, TypeError):
            return False


_WORKER: _ChunkWriter | None = None
#: Linux ``prctl`` option: the signal a process receives when its parent dies.
_PR_SET_PDEATHSIG = 1


def _watch_parent(parent_pid: int, period: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(period)
    os._exit(1)


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the generating process dies, even by ``SIGKILL``.

    On Linux the kernel sends it ``SIGTERM`` (``prctl(PR_SET_PDEATHSIG)``, set through ``ctypes``);
    elsewhere a daemon thread polls ``os.getppid()`` twice a second and exits when the parent is
    gone (the worker is then re-parented). Either way a worker whose parent died before this call
    exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:
                    os._exit(1)
                return
        except (OSError, AttributeError):  # pragma: no cover - no usable libc
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="an8flower-parent-watch", daemon=True).start()


def _init_worker(writer: _ChunkWriter, parent_pid: int) -> None:
    global _WORKER
    _WORKER = writer
    _exit_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: let the parent handle it (it cancels the pending
    # chunks and waits for the running ones, whose files and row files are then complete).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_chunk(chunk_id: int) -> int:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(chunk_id)


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# output folder


def _plan_record(spec: VariantSpec, seed: int, per_class: int) -> dict[str, Any]:
    total = spec.num_classes * per_class
    return {
        "format": FORMAT,
        "an8flower_version": __version__,
        "code_sha256": code_sha256(),
        "variant": spec.name,
        "spec_sha256": spec.sha256(),
        "seed": seed,
        "size": spec.size,
        "per_class": per_class,
        "total": total,
        "chunk_size": chunk_size(total),
    }


def _read_json_object(path: Path, limit: int, out: Path) -> dict[str, Any]:
    """A JSON object from the output folder, read within ``limit`` bytes (it may come from elsewhere).

    Raises:
        UsageError: naming the folder and the file: unreadable, too large, not a JSON object.
    """
    try:
        value = parse_json(read_bounded(path, limit, path.name), str(path))
    except (DatasetFormatError, DatasetNotFoundError) as exc:
        raise UsageError(f"output folder {out}: unreadable {path.relative_to(out)} ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"output folder {out}: {path.relative_to(out)} is not a JSON object")
    return value


def _mismatch(found: dict[str, Any], wanted: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{k} {found.get(k)!r} (asked: {wanted[k]!r})" for k in keys if found.get(k) != wanted[k]]


def _probe_writable(folder: Path, out: Path) -> None:
    probe = folder / f".an8flower-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"output folder {out}: cannot write in {folder} ({exc.strerror})") from None


def _inspect_out(out: Path, record: dict[str, Any]) -> str:
    """Check the output folder before anything is written: "new", "partial" or "complete".

    Raises:
        UsageError: ``out`` is a file, an unrelated non-empty folder, unwritable, or holds a dataset
            or an unfinished generation made with other parameters.
    """
    keys = ("format", "an8flower_version", "code_sha256", "spec_sha256", "seed", "size", "per_class")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out}: exists and is not a folder")
    if out.is_dir():
        check_lock_path(out / LOCK_NAME, f"output folder {out}")
        work = out / WORK_DIR
        if work.is_symlink() or (work.exists() and not work.is_dir()):
            raise UsageError(f"output folder {out}: {work} is {'a symbolic link' if work.is_symlink() else 'a file'}, "
                             "not the work folder an8flower writes; remove it")
        if os.path.lexists(out / DATASET_JSON):
            info = _read_json_object(out / DATASET_JSON, DATASET_JSON_MAX_BYTES, out)
            diff = _mismatch(info, record, keys)
            if diff:
                raise UsageError(f"output folder {out}: holds a dataset made with other parameters: {'; '.join(diff)}; "
                                 "use another --out")
            return "complete"
        plan_path = out / WORK_DIR / "plan.json"
        if os.path.lexists(plan_path):
            plan = _read_json_object(plan_path, DATASET_JSON_MAX_BYTES, out)
            diff = _mismatch(plan, record, keys + ("chunk_size",))
            if diff:
                raise UsageError(
                    f"output folder {out}: holds an unfinished generation with other parameters: {'; '.join(diff)}; "
                    "resume it with those, or delete it"
                )
            _probe_writable(out, out)
            return "partial"
        # A plain lock file, and a work folder without its plan yet (another shard is creating it,
        # or one was killed doing so), do not make the folder non-empty; anything else does.
        if any(p.name not in (LOCK_NAME, WORK_DIR) for p in out.iterdir()):
            raise UsageError(f"output folder {out}: not empty and not an an8flower dataset; choose a new or empty folder")
        _probe_writable(out, out)
        return "new"
    ancestor = out.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"output folder {out}: cannot be created, {ancestor} is not a folder")
    _probe_writable(ancestor, out)
    return "new"


def _make_folders(root: Path, spec: VariantSpec, record: dict[str, Any]) -> None:
    """The work folder and its plan first (so that a shard starting meanwhile sees a generation in
    progress, see :func:`_inspect_out`), then the sample folders."""
    def folder(path: Path) -> Path:  # a real folder: a symbolic link would lead the writes out of root
        path.mkdir(exist_ok=True)
        if path.is_symlink() or not path.is_dir():
            raise UsageError(f"output folder {root}: {path} is a symbolic link or not a folder; remove it")
        return path

    try:
        work = folder(root / WORK_DIR)
        if not (work / "plan.json").is_file():
            atomic_write_text(work / "plan.json", canonical_json(record))
        folder(work / "rows")
        for kind in KINDS:
            top = folder(root / KIND_FOLDERS[kind])
            for split in SPLITS:
                split_folder = folder(top / split)
                for label in range(spec.num_classes):
                    folder(split_folder / class_folder(spec, label))
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise  # reported by generate with how much more space is needed
        raise UsageError(f"output folder {root}: cannot create ({exc.strerror}: {exc.filename})") from None


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _undo_new_folder(root: Path, created: Path | None) -> None:
    """Leave the file system as it was before a fresh generation into ``root`` started.

    ``created`` is what :func:`_first_missing` returned before anything was written: that folder
    is removed; if ``root`` existed (it was then empty), only what is inside it is.
    """
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_renderable(spec: VariantSpec, seed: int, index: int, source: Any) -> None:
    """Render sample ``index`` once before anything is written, so that a spec the renderer cannot
    draw (e.g. visibility constraints that no draw meets) fails without leaving a folder behind.

    Raises:
        SpecError: naming the spec file when the variant came from one.
    """
    from an8flower.render import render

    try:
        render(spec, seed, index)
    except SpecError as exc:
        named = isinstance(source, (str, os.PathLike)) and os.fspath(source) != spec.name
        raise SpecError(f"{os.fspath(source)}: {exc}" if named else str(exc)) from None


def _sweep_temporaries(root: Path) -> None:
    for top in [root] + [root / KIND_FOLDERS[k] for k in KINDS]:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if is_temp_name(name):
                    try:
                        os.unlink(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        pass
            if top == root:
                break


def _finalise(root: Path, spec: VariantSpec, writer: _ChunkWriter, record: dict[str, Any], n_chunks: int) -> tuple[str, str]:
    """Write manifest.csv, the data card and dataset.json from the chunk row files (under the
    folder's exclusive lock: no other run writes meanwhile)."""
    rows: list[ManifestRow] = []
    for c in range(n_chunks):
        rows.extend(ManifestRow.from_record(r) for r in writer.read_journal(c))
    rows.sort(key=lambda r: r.index)
    if [r.index for r in rows] != list(range(writer.plan.total)):
        raise RuntimeError(f"{root}: chunk row files do not cover indices 0..{writer.plan.total - 1}")
    data = manifest_bytes(rows)
    manifest_sha = sha256_bytes(data)
    content_sha = content_sha256(rows)
    documents = dataset_documents(spec, record["seed"], writer.plan.per_class, manifest_sha)
    _sweep_temporaries(root)
    atomic_write_bytes(root / MANIFEST_NAME, data)
    for name, content in documents.items():
        atomic_write_bytes(root / name, content)
    info = {
        **dataset_plan(spec, record["seed"], writer.plan.per_class),
        "an8flower_version": __version__,
        "code_sha256": record["code_sha256"],
        "png_encoder": png_encoder_info(),
        "manifest_sha256": manifest_sha,
        "content_sha256": content_sha,
        "data_card_sha256": sha256_bytes(documents[DATACARD_NAME]),
        "croissant_sha256": sha256_bytes(documents[CROISSANT_NAME]),
    }
    atomic_write_text(root / DATASET_JSON, canonical_json(info))
    shutil.rmtree(root / WORK_DIR, ignore_errors=True)
    return manifest_sha, content_sha


def _render_chunks(writer: _ChunkWriter, todo: Sequence[int], workers: int, n_mine: int, n_todo: int,
                   shard: tuple[int, int] | None, progress: bool | None) -> None:
    """Render and write the chunks ``todo``, in this process or in a spawned pool of ``workers``."""
    from tqdm import tqdm

    desc = f"generate {writer.spec.name}" + (f" [{shard[0]}/{shard[1]}]" if shard else "")
    disable = None if progress is None else not progress
    with tqdm(total=n_mine, initial=n_mine - n_todo, unit="img", desc=desc, disable=disable) as bar:
        n_workers = min(workers, len(todo))
        if n_workers <= 1:
            for c in todo:
                bar.update(writer(c))
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(writer, os.getpid())) as pool:
            futures = {pool.submit(_run_chunk, c) for c in todo}
            try:
                while futures:
                    done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                    for f in done:
                        bar.update(f.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` did.

    Attributes:
        root: the dataset folder.
        complete: whether the dataset is finished (``dataset.json`` written).
        rendered: samples rendered by this call.
        skipped: samples of this call's share that an earlier run had already written.
        chunks_done, chunks_total: complete chunks after this call, out of all chunks.
        manifest_sha256, content_sha256: the dataset's hashes once complete, else None.
    """

    root: str
    complete: bool
    rendered: int
    skipped: int
    chunks_done: int
    chunks_total: int
    num_samples: int
    manifest_sha256: str | None = None
    content_sha256: str | None = None


def generate(
    variant: str | os.PathLike[str] | VariantSpec,
    out: str | os.PathLike[str],
    *,
    size: int | None = None,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    workers: int | None = None,
    shard: tuple[int, int] | str | None = None,
    progress: bool | None = None,
) -> GenerateResult:
    """Generate (or resume, or finish) a dataset folder.

    Args:
        variant: built-in variant name, path of a ``.json``/``.toml`` spec file, or a spec.
        out: the dataset folder (created with its parents; may exist empty, or hold an unfinished
            generation of the same parameters, which is resumed).
        size: image side in pixels (64..512); default the spec's size (224 for the built-ins).
        per_class: samples per class over the three splits (see :func:`an8flower.layout.split_sizes`), at most
            :data:`~an8flower.layout.MAX_PER_CLASS`, and :data:`~an8flower.layout.MAX_SAMPLES` samples in all.
        seed: global seed, 0..2**63-1 (:func:`an8flower.spec.check_seed`).
        workers: worker processes (default: the usable CPUs); 1 renders in this process. Workers
            are started with the ``spawn`` method (safe with threads and torch in the parent), so
            a script that calls this with ``workers > 1`` must guard its entry point with
            ``if __name__ == "__main__":``. They exit when this process dies (even by ``SIGKILL``).
        shard: ``(I, N)`` or ``"I/N"``: render only shard I of N (1-based). The dataset is
            finalised by whichever call finds every chunk complete.
        progress: show a tqdm bar; None shows one on a terminal only.

    **Locks** (:mod:`an8flower.folderlock`). An unsharded run holds ``out/.an8flower.lock``
    exclusively for its whole duration; a shard holds it shared (shards of one folder run side by
    side) and ``.an8flower-work/shard-I-of-N.lock`` exclusively. A second run on a folder in use is
    refused with a :class:`UsageError` naming the process (``in use by process PID on HOST``). The
    shard that completes the dataset waits for the exclusive lock (the other shards to finish)
    before it writes the manifest. The lock files are removed when released.

    **Size.** Before writing, the output size is estimated (:func:`estimate_dataset_bytes`) and
    refused when above :data:`MAX_OUTPUT_BYTES` or above the free space of the file system.

    Returns:
        A :class:`GenerateResult`.

    Raises:
        SpecError: unknown variant, bad spec file, or a spec whose samples the renderer cannot draw.
        UsageError: bad size, per-class, seed, workers or shard, an unusable output folder, a
            folder in use by another run, or too little disk space. These leave the file system as
            it was: they are raised before anything is written, or (a spec that fails on a later
            sample) the folder a fresh, unsharded run created is removed again.
    """
    spec = resolve_spec(variant, size)
    check_counts(spec.num_classes, per_class)
    seed = check_seed(seed)
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers {workers!r}: must be an integer >= 1")
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
    if shard_t is not None and (len(shard_t) != 2 or not 1 <= shard_t[0] <= shard_t[1]):
        raise UsageError(f"shard {shard!r}: expected (I, N) with 1 <= I <= N")

    root = Path(out)
    record = _plan_record(spec, seed, per_class)
    state = _inspect_out(root, record)
    total, csize = record["total"], record["chunk_size"]
    n_chunks = math.ceil(total / csize)
    if state == "complete":
        return _complete_result(root, n_chunks, total, 0, 0)
    writer = _ChunkWriter(spec, seed, per_class, str(root), csize)
    mine = [c for c in range(n_chunks) if shard_t is None or c % shard_t[1] == shard_t[0] - 1]
    todo = [c for c in mine if not writer.is_complete(c)]
    _check_output_size(spec, per_class, root, len(todo) / n_chunks)
    if todo:
        _check_renderable(spec, seed, writer.indices(todo[0])[0], variant)
    created = _first_missing(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"output folder {root}: cannot create ({exc.strerror})") from None
    what = f"output folder {root}"

    def still_to_write() -> int:  # after a full disk: the chunks not complete yet
        left = sum(not writer.is_complete(c) for c in range(n_chunks))
        return int(estimate_dataset_bytes(spec, per_class) * max(left, 1) / n_chunks)

    with reporting_disk_full(root, still_to_write):
        folder_lock = _lock_folder(root, what, shard_t)
        shard_lock = None
        try:
            state = _inspect_out(root, record)  # again: another run may have changed it meanwhile
            if state == "complete":
                return _complete_result(root, n_chunks, total, 0, 0)
            _make_folders(root, spec, record)
            if shard_t is not None:
                name = f"shard {shard_t[0]}/{shard_t[1]}"
                shard_lock = acquire(root / WORK_DIR / f"shard-{shard_t[0]}-of-{shard_t[1]}.lock", f"{what}, {name}",
                                     holder=holder_text(name))
            todo = [c for c in mine if not writer.is_complete(c)]
            n_mine = sum(len(writer.indices(c)) for c in mine)
            n_todo = sum(len(writer.indices(c)) for c in todo)
            try:
                _render_chunks(writer, todo, workers, n_mine, n_todo, shard_t, progress)
            except An8FlowerError:
                # Bad input found while rendering (a spec whose samples cannot all be drawn): a fresh,
                # unsharded run leaves nothing behind. Interruptions and I/O errors keep the finished
                # chunks for a resume; so does a shard, whose folder other shards may be writing into.
                if state == "new" and shard_t is None:
                    _undo_new_folder(root, created)
                raise
            mine_set = set(mine)
            complete = [c for c in range(n_chunks) if c in mine_set or writer.is_complete(c)]
            if len(complete) < n_chunks:
                return GenerateResult(str(root), False, n_todo, n_mine - n_todo, len(complete), n_chunks, total)
            if shard_t is not None:
                folder_lock = _exclusive(folder_lock, what)
                if (root / DATASET_JSON).is_file():  # a shard that finished at the same time finalised it
                    return _complete_result(root, n_chunks, total, n_todo, n_mine - n_todo)
            manifest_sha, content_sha = _finalise(root, spec, writer, record, n_chunks)
            return GenerateResult(str(root), True, n_todo, n_mine - n_todo, n_chunks, n_chunks, total,
                                  manifest_sha, content_sha)
        finally:
            if shard_lock is not None:
                shard_lock.release()
            folder_lock.release()


def _complete_result(root: Path, n_chunks: int, total: int, rendered: int, skipped: int) -> GenerateResult:
    """The result for a folder that holds a finished dataset (left-over work files removed)."""
    shutil.rmtree(root / WORK_DIR, ignore_errors=True)
    info = _read_json_object(root / DATASET_JSON, DATASET_JSON_MAX_BYTES, root)
    return GenerateResult(str(root), True, rendered, skipped, n_chunks, n_chunks, total,
                          info.get("manifest_sha256"), info.get("content_sha256"))


def _lock_folder(root: Path, what: str, shard: tuple[int, int] | None) -> Lock:
    """The folder lock: exclusive for an unsharded run, shared for a shard (see :func:`generate`)."""
    path = root / LOCK_NAME
    try:
        return acquire(path, what, shared=shard is not None)
    except UsageError as exc:
        if shard is None and not read_holder(path):  # held shared: name the running shards
            held = _running_shards(root)
            if held:
                raise UsageError(f"{what}: in use by {'; '.join(held)}") from None
        raise exc from None


def _running_shards(root: Path) -> list[str]:
    """Holder texts of the shard locks of ``root`` that are held now."""
    found = []
    for path in sorted((root / WORK_DIR).glob("shard-*.lock")):
        try:
            with acquire(path, "probe", shared=True):
                pass
        except UsageError:
            found.append(read_holder(path) or path.name)
    return found


def _exclusive(lock: Lock, what: str) -> Lock:
    """Turn a shard's shared folder lock into an exclusive one, waiting for the other shards."""
    if lock.upgrade():
        return lock
    lock.release()  # its file was deleted by a run that released it meanwhile: lock the new one
    return acquire(lock.path, what, wait=True)
