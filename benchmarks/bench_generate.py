"""End-to-end ``generate`` throughput against the PNG-encoding floor, measured in the same run.

* ``test_png_floor_2_processes``: the same 224 px samples (rendered beforehand, memory-mapped from
  ``.npy`` files) are merely PNG-encoded and written (image, mask, part map; the generator's encoder
  and atomic writes) by a spawned pool of 2 processes, pool start-up included.
* ``test_generate_end_to_end_2_workers``: ``generate("single-6c", size=224, workers=2)``: render,
  encode, hash, write, manifest, dataset.json, pool start-up included.

The second test prints both rates and their ratio (the issue's target: end-to-end >= 50% of the
floor) and stores them in the benchmark's ``extra_info``. Run::

    python -m pytest benchmarks/bench_generate.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from an8flower.generate import chunk_size, generate
from an8flower.layout import IndexPlan, sample_paths
from an8flower.manifest import KIND_FOLDERS, atomic_write_bytes, encode_png
from an8flower.render import render
from an8flower.spec import load_spec

VARIANT, SIZE, PER_CLASS, WORKERS, ROUNDS = "single-6c", 224, 100, 2, 3
RESULTS: dict[str, float] = {}

_ARRAYS: dict[str, np.ndarray] = {}


def _init_floor(folder: str) -> None:
    for kind in ("image", "mask", "parts"):
        _ARRAYS[kind] = np.load(Path(folder) / f"{kind}.npy", mmap_mode="r")


def _encode_chunk(job: tuple[str, list[tuple[int, dict[str, str]]]]) -> int:
    root, items = job
    for i, paths in items:
        for kind in ("image", "mask", "parts"):
            atomic_write_bytes(Path(root) / paths[kind], encode_png(np.asarray(_ARRAYS[kind][i]), kind))
    return len(items)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    """The dataset's samples rendered once, stored as .npy stacks, and their relative paths."""
    spec = load_spec(VARIANT).with_size(SIZE)
    plan = IndexPlan(spec.num_classes, PER_CLASS)
    folder = tmp_path_factory.mktemp("floor-src")
    rendered = [render(spec, 0, i) for i in range(plan.total)]
    np.save(folder / "image.npy", np.stack([s.image for s in rendered]))
    np.save(folder / "mask.npy", np.stack([s.mask for s in rendered]))
    np.save(folder / "parts.npy", np.stack([s.parts for s in rendered]))
    paths = [(i, sample_paths(spec, i, plan.split_of(i), plan.class_of(i))) for i in range(plan.total)]
    return folder, paths


def _fresh(base: Path, name: str) -> Path:
    out = base / name
    if out.exists():
        shutil.rmtree(out)
    return out


def test_png_floor_2_processes(benchmark, samples, tmp_path):
    folder, paths = samples
    size = chunk_size(len(paths))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]

    def setup():
        out = _fresh(tmp_path, "floor")
        for _, p in paths:
            for kind in KIND_FOLDERS:
                (out / p[kind]).parent.mkdir(parents=True, exist_ok=True)
        return (str(out),), {}

    def encode_all(out: str) -> int:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=_init_floor, initargs=(str(folder),)) as pool:
            return sum(pool.map(_encode_chunk, [(out, c) for c in chunks]))

    n = benchmark.pedantic(encode_all, setup=setup, rounds=ROUNDS, iterations=1)
    assert n == len(paths)
    rate = len(paths) / benchmark.stats.stats.mean
    RESULTS["floor"] = rate
    benchmark.extra_info.update(images=len(paths), size=SIZE, workers=WORKERS, images_per_s=round(rate, 1))


def test_generate_end_to_end_2_workers(benchmark, samples, tmp_path):
    _, paths = samples

    def setup():
        return (str(_fresh(tmp_path, "generated")),), {}

    def run(out: str):
        return generate(VARIANT, out, size=SIZE, per_class=PER_CLASS, seed=0, workers=WORKERS, progress=False)

    result = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    assert result.complete and result.num_samples == len(paths)
    rate = len(paths) / benchmark.stats.stats.mean
    benchmark.extra_info.update(images=len(paths), size=SIZE, workers=WORKERS, images_per_s=round(rate, 1))
    if "floor" in RESULTS:
        ratio = rate / RESULTS["floor"]
        benchmark.extra_info.update(floor_images_per_s=round(RESULTS["floor"], 1), ratio_to_floor=round(ratio, 3))
        print(f"\n{VARIANT} {SIZE}px, {WORKERS} workers: end-to-end {rate:.1f} img/s, "
              f"PNG floor {RESULTS['floor']:.1f} img/s, ratio {ratio:.2f} (target >= 0.50)")
