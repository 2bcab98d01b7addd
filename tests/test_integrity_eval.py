"""Hostile input on the evaluation side (issue 18): cell files, caches, model cards, configs, plugins, rules.

Every file here is tiny and written by the test; "big" files are headers that claim a big shape.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import run_leaderboard

from test_leaderboard import ColourDetector, squares


def _board(out, **kw) -> RunConfig:
    return RunConfig(out=str(out), explainers=["gradient", "random"], metrics=["iou_auc", "pointing_game"],
                     batch_size=4, examples=2, plots=False, all_images=True, **kw)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """Shards 1/2 and 2/2 of a small in-process board (9 images, 2 explainers x 2 metrics)."""
    root = tmp_path_factory.mktemp("shards")
    for i in (1, 2):
        run_leaderboard(_board(root / f"part-{i}"), datasets=[squares()], models={"m": ColourDetector()},
                        progress=False, log=lambda msg: None, shard=(i, 2))
    return root


def _shard_copy(two_shards, tmp_path):
    parts = []
    for i in (1, 2):
        shutil.copytree(two_shards / f"part-{i}", tmp_path / f"part-{i}")
        parts.append(tmp_path / f"part-{i}")
    return parts


def _cell_files(part) -> dict[str, str]:
    """metric -> cell file name in a shard folder."""
    out = {}
    for name in os.listdir(part / "shard"):
        if name.endswith(".json"):
            body = json.loads((part / "shard" / name).read_text())["body"]
            if body["base"]["explainer"] == "gradient":
                out[body["accumulator"]["metric"]] = name
    return out


# ---------------------------------------------------------------- 4. a cell file that holds another cell


def test_merge_refuses_a_cell_file_copied_over_another(two_shards, tmp_path) -> None:
    from an8flower.eval.shards import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    files = _cell_files(parts[1])
    shutil.copyfile(parts[1] / "shard" / files["pointing_game"], parts[1] / "shard" / files["iou_auc"])
    with pytest.raises(UsageError, match=f"{files['iou_auc']}: holds another cell than"):
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert not (tmp_path / "merged" / "results.csv").exists()


def test_merge_refuses_overlapping_shares_in_one_line(two_shards, tmp_path) -> None:
    from an8flower.eval.shards import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    # shard 2 claims shard 1's share of the gradient/iou_auc cell (the record is self-consistent: a
    # copy of the whole file, key and checksum included)
    name = _cell_files(parts[0])["iou_auc"]
    shutil.copyfile(parts[0] / "shard" / name, parts[1] / "shard" / name)
    with pytest.raises(UsageError, match="both scored image position 0: their shares overlap") as info:
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert "\n" not in str(info.value)


def test_the_unchanged_shards_merge(two_shards, tmp_path) -> None:
    from an8flower.eval.shards import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    summary = merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert len(summary.cells) == 4 and all(c["n"] == 9 for c in summary.cells)
