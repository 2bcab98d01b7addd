"""The leaderboard over several processes (torchrun, gloo on CPU) and as merged --shard runs: same numbers."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_leaderboard import ColourDetector, squares

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.distributed import World, my_batches
from an8flower.eval.scoring import METRICS, Accumulator, Timer, merge_accumulators, new_accumulators, run_explainer

#: A small CLI board: 24 images in batches of 4 (6 batches, so both ranks get several), every kind
#: of metric (per image, set-level PxAP, part shares, a model-based one on the first 6 images only, the
#: model-aware ones that need the reliance rank 0 measures and broadcasts).
BOARD = ["leaderboard", "--variant", "single-6c", "--size", "64", "--per-class", "10", "--epochs", "1",
         "--explainer", "gradient", "--explainer", "random", "--explainer", "oracle",
         "--metric", "iou_auc", "--metric", "pointing_game", "--metric", "pixel_average_precision",
         "--metric", "deletion_auc", "--metric", "part_attribution", "--metric", "counterfactual_mass",
         "--metric", "contrastivity", "--all-images", "--max-images", "24",
         "--model-metric-images", "6", "--batch-size", "4", "--option", "deletion_auc.steps=4", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _an8flower(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    cmd = (launcher if processes > 1 else [sys.executable]) + ["-m", "an8flower", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _per_image(out) -> str:
    return gzip.decompress((out / "per_image.csv.gz").read_bytes()).decode()


def _checkpoint(out) -> str:
    (name,) = os.listdir(out / "models")
    return str(out / "models" / name)


@pytest.fixture(scope="module")
def two_process_board(tmp_path_factory):
    """The board run by torchrun with 2 processes; rank 0 trains the model, rank 1 loads it."""
    out = tmp_path_factory.mktemp("dist") / "two"
    done = _an8flower(*BOARD, "--out", str(out), processes=2)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_two_processes_give_the_single_process_numbers(two_process_board, tmp_path) -> None:
    run = json.loads((two_process_board / "run.json").read_text())
    assert run["processes"] == {"world_size": 2, "backend": "gloo"}
    assert len(os.listdir(two_process_board / "models")) == 1  # trained once, by rank 0
    one = tmp_path / "one"
    done = _an8flower(*BOARD, "--weights", _checkpoint(two_process_board), "--out", str(one))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _per_image(one) == _per_image(two_process_board)
    assert (one / "results.csv").read_text() == (two_process_board / "results.csv").read_text()
    assert (one / "leaderboard.md").read_text() == (two_process_board / "leaderboard.md").read_text()
    assert len(_per_image(one).splitlines()) > 100  # 3 explainers x 4 per-image metrics x up to 24 images


DYING = textwrap.dedent("""
    import os
    from an8flower.baselines import Explainer, register_explainer

    @register_explainer("test_dies_on_rank_1")
    class DiesOnRank1(Explainer):
        '''The image brightness; the first call on rank 1 kills that process unless MARKER exists.'''

        def explain(self, model, images, targets):
            marker = os.environ["AN8FLOWER_TEST_MARKER"]
            if os.environ.get("RANK") == "1" and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(17)
            return images.mean(1)
""")


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_naming_it_and_a_rerun_completes(two_process_board, tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "dying.py"
    plugin.write_text(DYING)
    monkeypatch.setenv("AN8FLOWER_TEST_MARKER", str(tmp_path / "died-once"))
    out = tmp_path / "r"
    args = [*BOARD, "--import", str(plugin), "--explainer", "test_dies_on_rank_1", "--weights",
            _checkpoint(two_process_board), "--out", str(out)]
    died = _an8flower(*args, processes=2)
    assert died.returncode != 0
    assert "rank      : 1" in died.stderr and "exitcode  : 17" in died.stderr
    assert not (out / "leaderboard.md").exists()
    again = _an8flower(*args, processes=2)
    assert again.returncode == 0, again.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["cells"]["cached"] > 0  # the cells finished before the death were kept
    # and the numbers are those of a clean single-process run
    clean = tmp_path / "clean"
    done = _an8flower(*args[:-1], str(clean))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _per_image(clean) == _per_image(out)


@pytest.mark.slow
def test_shards_merge_into_the_single_run_and_other_runs_are_refused(two_process_board, tmp_path) -> None:
    weights = ["--weights", _checkpoint(two_process_board)]
    for i in (1, 2):
        done = _an8flower(*BOARD, *weights, "--shard", f"{i}/2", "--out", str(tmp_path / f"part-{i}"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert not (tmp_path / f"part-{i}" / "leaderboard.md").exists()  # a shard writes no report
    merged = tmp_path / "merged"
    done = _an8flower("leaderboard", "merge", str(tmp_path / "part-1"), str(tmp_path / "part-2"), "--out", str(merged))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _per_image(merged) == _per_image(two_process_board)
    assert (merged / "results.csv").read_text() == (two_process_board / "results.csv").read_text()
    # a shard of another configuration (another seed) is refused, naming it
    other = tmp_path / "other-2"
    done = _an8flower(*BOARD, *weights, "--seed", "1", "--shard", "2/2", "--out", str(other))
    assert done.returncode == 0, done.stderr[-2000:]
    refused = _an8flower("leaderboard", "merge", str(tmp_path / "part-1"), str(other), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and f"{other}: a shard of another run" in refused.stderr
    missing = _an8flower("leaderboard", "merge", str(tmp_path / "part-1"), "--out", str(tmp_path / "y"))
    assert missing.returncode == 2 and "missing 2" in missing.stderr


def test_batches_are_dealt_round_robin() -> None:
    world = [World(rank=r, size=3, shard=True) for r in range(3)]
    shares = [[(s.start, s.stop) for s in my_batches(10, 3, w)] for w in world]
    assert shares == [[(0, 3), (9, 10)], [(3, 6)], [(6, 9)]]
    assert [(s.start, s.stop) for s in my_batches(10, 3, World())] == [(0, 3), (3, 6), (6, 9), (9, 10)]


@pytest.mark.parametrize("size", [2, 3])
def test_merged_shares_equal_the_single_process_accumulators(size: int) -> None:
    """In-process: every rank's accumulators, merged, are exactly one process's."""
    data = squares(n=11)
    config = RunConfig(metrics=["iou_auc", "pixel_average_precision", "part_attribution", "deletion_auc"],
                       batch_size=3, model_metric_images=5, metric_options={"deletion_auc": {"steps": 4}})
    model = ColourDetector()
    keep = torch.arange(len(data.test))
    from an8flower.baselines import build_explainer

    def accumulate(world: World) -> tuple[list[Accumulator], list]:
        accs = new_accumulators(config.metrics, config, len(keep))
        res = run_explainer(build_explainer("gradient"), "gradient", accs, model, data, data.test.select(keep),
                            my_batches(len(keep), config.batch_size, world), config, torch.device("cpu"), Timer(),
                            4, [1], lambda m: None)
        return accs, res["examples"]

    single, single_ex = accumulate(World())
    parts = [accumulate(World(rank=r, size=size, shard=True)) for r in range(size)]
    for i, acc in enumerate(single):
        merged = merge_accumulators([p[0][i] for p in parts])
        assert merged.positions == acc.positions
        assert merged.scores == acc.scores
        if acc.pxap_counts is not None:
            assert np.array_equal(merged.pxap_counts, acc.pxap_counts)
        if acc.curve_sum is not None:
            assert np.array_equal(merged.curve_sum, acc.curve_sum) and np.array_equal(merged.curve_n, acc.curve_n)
        if acc.share:
            assert np.array_equal(np.concatenate(merged.share), np.concatenate(acc.share))
    assert single[3].positions == [0, 1, 2, 3, 4]  # deletion: the first model_metric_images positions only
    merged_ex = sorted(e for p in parts for e in p[1])
    assert [p for p, _ in merged_ex] == [p for p, _ in single_ex] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="two shares scored the same image"):
        merge_accumulators([single[0], single[0]])


def test_shard_under_torchrun_is_refused(monkeypatch) -> None:
    from an8flower.eval.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="--shard splits a run without torch.distributed"):
        setup(shard=(1, 2))
    assert METRICS["pixel_average_precision"].kind == "set"


#: A named transformer (the vit-tiny preset shrunk by options) on a small board.
VIT = ["leaderboard", "--variant", "single-6c", "--size", "64", "--per-class", "10", "--epochs", "1",
       "--model", "vit-tiny", "--model-option", "vit-tiny.image_size=64", "--model-option", "vit-tiny.patch_size=16",
       "--model-option", "vit-tiny.num_layers=2", "--model-option", "vit-tiny.num_heads=2",
       "--model-option", "vit-tiny.hidden_dim=16", "--model-option", "vit-tiny.mlp_dim=32",
       "--explainer", "vit_rollout", "--explainer", "gradient", "--metric", "iou_auc", "--metric", "deletion_auc",
       "--all-images", "--max-images", "12", "--model-metric-images", "4", "--batch-size", "3",
       "--option", "deletion_auc.steps=4", "--quiet", "--no-plots"]


@pytest.mark.slow
def test_a_named_vit_gives_the_same_numbers_in_shards_and_under_torchrun(tmp_path) -> None:
    single = tmp_path / "single"
    done = _an8flower(*VIT, "--out", str(single))
    assert done.returncode == 0, done.stderr[-2000:]
    for i in (1, 2):  # each shard trains the model itself: the same bytes (same seed, one thread)
        done = _an8flower(*VIT, "--shard", f"{i}/2", "--out", str(tmp_path / f"part-{i}"))
        assert done.returncode == 0, done.stderr[-2000:]
    assert (open(_checkpoint(tmp_path / "part-1"), "rb").read() == open(_checkpoint(tmp_path / "part-2"), "rb").read()
            == open(_checkpoint(single), "rb").read())
    merged = tmp_path / "merged"
    done = _an8flower("leaderboard", "merge", str(tmp_path / "part-1"), str(tmp_path / "part-2"), "--out", str(merged))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _per_image(merged) == _per_image(single)
    two = tmp_path / "two"
    done = _an8flower(*VIT, "--weights", _checkpoint(single), "--out", str(two), processes=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _per_image(two) == _per_image(single)
    assert (two / "results.csv").read_text() == (single / "results.csv").read_text()
    rows = _per_image(single).splitlines()
    assert len(rows) == 1 + 2 * (12 + 4) and "vit-tiny[" in rows[1]  # 2 explainers x (12 + 4 images)
