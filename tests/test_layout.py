"""The on-disk layout lives in an8flower.layout: the writer uses it, readers never import the writer."""

from __future__ import annotations

import subprocess
import sys

from an8flower.layout import IndexPlan, class_folder, dataset_plan, parse_shard, sample_paths, split_sizes
from an8flower.spec import load_spec

READERS = ("an8flower.verify", "an8flower.export", "an8flower.datasets", "an8flower.datasets.generated",
           "an8flower.croissant", "an8flower.datacard", "an8flower.show", "an8flower.manifest", "an8flower.layout")


def test_no_reader_imports_the_writer():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in READERS)
            + "print(sorted(m for m in sys.modules if m in ('an8flower.generate', 'an8flower.render')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_layout_by_hand():
    spec = load_spec("double-12c")
    assert split_sizes(10) == {"train": 7, "val": 1, "test": 2}
    plan = IndexPlan(12, 10)
    assert (plan.split_range("val"), plan.split_of(84), plan.split_of(95), plan.class_of(95)) == (range(84, 96), "val",
                                                                                                    "val", 11)
    assert class_folder(spec, 3) == f"03-{spec.classes[3]}"
    assert sample_paths(spec, 95, "val", 11)["mask"] == f"masks/val/11-{spec.classes[11]}/000095.png"
    info = dataset_plan(spec, 7, 10)
    assert info["split_index_ranges"] == {"train": [0, 84], "val": [84, 96], "test": [96, 120]}
    assert info["layout"]["parts"] == "parts/{split}/{label:02d}-{class}/{index:06d}.png"
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
