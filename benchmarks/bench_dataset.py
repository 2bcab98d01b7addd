"""Cost of the loader's checks, measured side by side in one run.

* ``test_file_reads``: the loader's read of every image and mask file of a ``single-6c`` folder at
  224 px (``An8Flower._read``: path check, header check, decode), without and with
  ``verify=True`` (one SHA-256 of the file's bytes more), in alternating rounds; prints both times
  per file and the ratio of the verified to the plain read;
* ``test_open``: ``An8Flower(root, "train")`` on a 6,000-row manifest (the default size), whose
  ``dataset.json`` and rows are checked against the index plan.

Run::

    flock /work/bench.lock python -m pytest benchmarks/bench_dataset.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import statistics
import time

import pytest

from an8flower.datasets.generated import An8Flower
from an8flower.generate import generate

ROUNDS = 7


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-ds") / "s6"
    generate("single-6c", root, size=224, per_class=20, seed=0, workers=2, progress=False)
    return root


def _seconds_per_file(ds: An8Flower) -> float:
    start = time.perf_counter()
    for i in range(len(ds)):
        ds._read(i, "image")
        ds._read(i, "mask")
    return (time.perf_counter() - start) / (2 * len(ds))


def test_file_reads(benchmark, folder):
    plain, verified = An8Flower(folder, "train"), An8Flower(folder, "train", verify=True)

    def alternate():
        return [(_seconds_per_file(plain), _seconds_per_file(verified)) for _ in range(ROUNDS)]

    pairs = benchmark.pedantic(alternate, rounds=1, iterations=1)
    p = statistics.median(a for a, _ in pairs)
    v = statistics.median(b for _, b in pairs)
    ratio = statistics.median(b / a for a, b in pairs)
    benchmark.extra_info.update(plain_ms_per_file=p * 1e3, verified_ms_per_file=v * 1e3, ratio=ratio)
    print(f"\n224 px file read: plain {p * 1e3:.3f} ms, verify=True {v * 1e3:.3f} ms, "
          f"ratio {ratio:.3f} (median of {ROUNDS} alternating rounds)")


@pytest.fixture(scope="module")
def default_sized(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-open") / "s6"
    generate("single-6c", root, size=64, per_class=1000, seed=0, workers=2, progress=False)
    return root


def test_open(benchmark, default_sized):
    ds = benchmark.pedantic(An8Flower, args=(default_sized, "train"), rounds=3, iterations=1)
    print(f"\nopening a 6,000-sample folder (checks included): {benchmark.stats.stats.median * 1e3:.0f} ms "
          f"for {len(ds)} train items")
