"""``export`` throughput against the I/O floor, measured in the same run.

* ``test_floor_read_hash_write``: every sample file of the manifest is read, SHA-256-hashed and
  appended to one output file: the work any checked export must do, with no format around it.
* ``test_export_parquet`` / ``test_export_webdataset``: :func:`an8flower.export.export_dataset` on
  the same folder (checks, shards, card, manifest, rename).

The last test prints each export's rate and its ratio to the floor and stores them in the
benchmark's ``extra_info``. Run::

    python -m pytest benchmarks/bench_export.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from an8flower.export import export_dataset
from an8flower.generate import generate
from an8flower.manifest import MANIFEST_NAME, read_manifest
from an8flower.png import KINDS

VARIANT, SIZE, PER_CLASS, ROUNDS = "single-6c", 224, 100, 5
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-export") / "ds"
    generate(VARIANT, root, size=SIZE, per_class=PER_CLASS, workers=2, progress=False)
    return root


def _rate(benchmark, name: str, n: int) -> None:
    RESULTS[name] = n / benchmark.stats.stats.min
    benchmark.extra_info["rows_per_s"] = RESULTS[name]


def test_floor_read_hash_write(benchmark, dataset, tmp_path):
    rows = read_manifest(dataset / MANIFEST_NAME)

    def floor():
        with open(tmp_path / "all.bin", "wb") as out:
            for row in rows:
                for kind in KINDS:
                    data = (dataset / row.files[kind]).read_bytes()
                    assert hashlib.sha256(data).hexdigest() == row.sha256[kind]
                    out.write(data)

    benchmark.pedantic(floor, rounds=ROUNDS, iterations=1)
    _rate(benchmark, "floor", len(rows))


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_export(benchmark, dataset, tmp_path, fmt):
    out = tmp_path / fmt

    def setup():
        shutil.rmtree(out, ignore_errors=True)
        return (), {}

    result = benchmark.pedantic(lambda: export_dataset(dataset, out, fmt, progress=False), setup=setup,
                                rounds=ROUNDS, iterations=1)
    n = sum(result.rows.values())
    _rate(benchmark, fmt, n)
    if "floor" in RESULTS:
        ratio = RESULTS[fmt] / RESULTS["floor"]
        benchmark.extra_info["ratio_to_floor"] = ratio
        print(f"\n{fmt}: {RESULTS[fmt]:.0f} rows/s, floor {RESULTS['floor']:.0f} rows/s, ratio {ratio:.2f} "
              f"({n} rows of {SIZE} px)")
