"""Hostile input on the evaluation side (issue 18): cell files, caches, model cards, configs, plugins, rules.

Every file here is tiny and written by the test; "big" files are headers that claim a big shape.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib import format as npy
from test_leaderboard import ColourDetector, squares
from torch import nn

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import run_leaderboard


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
    from an8flower.eval.merge import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    files = _cell_files(parts[1])
    shutil.copyfile(parts[1] / "shard" / files["pointing_game"], parts[1] / "shard" / files["iou_auc"])
    with pytest.raises(UsageError, match=f"{files['iou_auc']}: holds another cell than"):
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert not (tmp_path / "merged" / "results.csv").exists()


def test_merge_refuses_overlapping_shares_in_one_line(two_shards, tmp_path) -> None:
    from an8flower.eval.merge import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    # shard 2 claims shard 1's share of the gradient/iou_auc cell (the record is self-consistent: a
    # copy of the whole file, key and checksum included)
    name = _cell_files(parts[0])["iou_auc"]
    shutil.copyfile(parts[0] / "shard" / name, parts[1] / "shard" / name)
    with pytest.raises(UsageError, match="both scored image position 0: their shares overlap") as info:
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert "\n" not in str(info.value)


def test_a_cache_cell_file_copied_over_another_is_damaged_and_recomputed(tmp_path) -> None:
    config = _board(tmp_path / "b")
    first = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False,
                            log=lambda m: None)
    by_metric = {}
    for path in _cell_paths(tmp_path / "b"):
        cell = json.loads(path.read_text())["cell"]
        if cell["explainer"] == "gradient":
            by_metric[cell["metric"]] = path
    shutil.copyfile(by_metric["pointing_game"], by_metric["iou_auc"])
    said: list[str] = []
    again = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False, log=said.append)
    assert f"damaged cache file {by_metric['iou_auc']} (its key differs from its file name): recomputed" in said
    assert again.computed == 1
    assert ({(c["explainer"], c["metric"]): c["value"] for c in again.cells}
            == {(c["explainer"], c["metric"]): c["value"] for c in first.cells})


def test_the_unchanged_shards_merge(two_shards, tmp_path) -> None:
    from an8flower.eval.merge import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    summary = merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    assert len(summary.cells) == 4 and all(c["n"] == 9 for c in summary.cells)


# ---------------------------------------------------------------- 6, 7. cache files: deep JSON, npz headers


def _cell_paths(out) -> list:
    return sorted(p for p in (out / "cache").rglob("*.json"))


def test_a_cache_cell_of_deep_json_is_damaged_and_recomputed(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "b"), explainers=["gradient"], metrics=["iou_auc"], batch_size=4, examples=0,
                       plots=False, all_images=True)
    first = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False, log=lambda m: None)
    (path,) = _cell_paths(tmp_path / "b")
    path.write_text("[" * 200_000 + "]" * 200_000)
    said: list[str] = []
    again = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False, log=said.append)
    assert f"damaged cache file {path} (JSON nested too deeply): recomputed" in said
    assert again.computed == 1 and again.cached == 0
    assert again.cells[0]["value"] == first.cells[0]["value"]
    assert json.loads(path.read_text())["cell"]["value"] == first.cells[0]["value"]  # rewritten whole


def _npz_with_header(path, shape, descr="<f4", payload=b"\0" * 64, name="heatmaps") -> None:
    """An .npz whose one member, NAME.npy, has a header claiming ``shape`` and only ``payload`` after it."""


    member = io.BytesIO()
    npy.write_array_header_1_0(member, {"descr": descr, "fortran_order": False, "shape": shape})
    member.write(payload)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}.npy", member.getvalue())


@pytest.mark.parametrize("shape, descr, reason", [
    ((2, 40000, 40000), "<f4", "has shape \\(2, 40000, 40000\\), expected \\(2, 8, 8\\)"),
    ((2, 8, 8), "<U100000000", "of dtype <U100000000 is larger than its shape allows"),
    ((2, 8, 8), "<f4", "is truncated"),
])
def test_a_cache_npz_is_bounded_by_its_headers_before_inflating(tmp_path, shape, descr, reason) -> None:

    from an8flower.eval.cache import CellCache

    cache = CellCache(str(tmp_path))
    key = "ab" * 32
    os.makedirs(os.path.dirname(cache.path(key, "npz")))
    _npz_with_header(cache.path(key, "npz"), shape, descr)
    warned: list[str] = []
    cache.warn = warned.append
    tracemalloc.start()
    try:
        assert cache.get_arrays(key, {"heatmaps": (2, 8, 8)}) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # nothing near the claimed size was allocated
    (message,) = warned
    assert message.startswith(f"damaged cache file {cache.path(key, 'npz')} (")
    assert re.search(reason, message), message


def test_a_cache_npz_inflating_past_its_header_is_refused(tmp_path) -> None:

    from an8flower.eval.cache import CellCache

    cache = CellCache(str(tmp_path))
    key = "cd" * 32
    os.makedirs(os.path.dirname(cache.path(key, "npz")))
    good = np.arange(128, dtype="<f4").tobytes()
    _npz_with_header(cache.path(key, "npz"), (2, 8, 8), payload=good + b"\0" * (4 << 20))  # deflates to a few KB
    warned: list[str] = []
    cache.warn = warned.append
    assert cache.get_arrays(key, {"heatmaps": (2, 8, 8)}) is None
    assert "trailing data" in warned[0]
    # the same header with exactly its data is read back
    _npz_with_header(cache.path(key, "npz"), (2, 8, 8), payload=good)
    arrays = cache.get_arrays(key, {"heatmaps": (2, 8, 8)})
    assert np.array_equal(arrays["heatmaps"], np.arange(128, dtype=np.float32).reshape(2, 8, 8))


def test_the_cached_reliance_record_is_read_back_within_its_shapes(tmp_path, monkeypatch) -> None:
    from test_reliance import SIZE, CentreReader, _fixed_head

    from an8flower.eval import reliance

    spec = _fixed_head("single-6c")
    spec_file = tmp_path / "fixed.json"
    spec_file.write_text(spec.to_json())
    config = RunConfig(out=str(tmp_path / "res"), variants=[str(spec_file)], size=SIZE, per_class=5, all_images=True,
                       explainers=["centre"], metrics=["counterfactual_mass"], examples=0, plots=False)
    first = run_leaderboard(config, models={"c": CentreReader(spec, SIZE)}, progress=False, log=lambda m: None)
    for path in (tmp_path / "res" / "cache").rglob("*.json"):
        path.unlink()  # the cell is recomputed, the reliance record must come from the cache

    def no_measuring(*args, **kwargs):
        raise AssertionError("the reliance was measured again")

    monkeypatch.setattr(reliance, "measure_reliance", no_measuring)
    said: list[str] = []
    again = run_leaderboard(config, models={"c": CentreReader(spec, SIZE)}, progress=False, log=said.append)
    assert not [m for m in said if "damaged" in m]
    assert again.computed == 1 and again.cells[0]["scores"] == first.cells[0]["scores"]


# ---------------------------------------------------------------- 6, 7. model cards


def _checkpoint(path, **card_fields) -> None:

    from an8flower.eval.models import build_model
    from an8flower.eval.train import model_card, save_checkpoint

    card = model_card("small-cnn", 6, (3, 32, 32), {"name": "toy"}, {"test": 0.5}, seed=0,
                      classes=[f"c{i}" for i in range(6)])
    card.update(card_fields)
    torch.manual_seed(0)
    save_checkpoint(path, build_model("small-cnn", 6), card)


@pytest.mark.parametrize("field, value, why", [
    ("num_classes", 3_000_000_000, "must be an integer from 2 to 100,000"),
    ("num_classes", 3e9, "must be an integer from 2 to 100,000"),
    ("num_classes", "six", "must be an integer from 2 to 100,000"),
    ("num_classes", 5000, "is more than the file holds"),
    ("input_size", [3, 60000, 60000], "must be \\[channels \\(1 or 3\\), height, width\\]"),
    ("input_size", [3, 0, 0], "must be \\[channels \\(1 or 3\\), height, width\\]"),
    ("classes", ["a", "b"], "must be num_classes names"),
])
def test_every_number_of_a_model_card_is_bounded_before_building(tmp_path, field, value, why) -> None:

    from an8flower.eval.models import load_checkpoint
    from an8flower.eval.train import read_model_card

    path = tmp_path / "m.pt"
    _checkpoint(path, **{field: value})
    message = f"weights file {path}: model card field {field!r} {why}"
    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match=message):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    with pytest.raises(UsageError, match=message):
        read_model_card(path)


def test_a_bad_card_is_a_one_line_cli_error(tmp_path, capsys) -> None:
    from PIL import Image

    from an8flower.cli import main

    path = tmp_path / "m.pt"
    _checkpoint(path, input_size=[3, 60000, 60000])
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code = main(["explain", str(tmp_path / "x.png"), "--weights", str(path), "--explainer", "gradient",
                 "--out", str(tmp_path / "e.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"weights file {path}: model card field 'input_size'" in err
    assert not (tmp_path / "e.png").exists()


def test_a_sound_card_loads(tmp_path) -> None:

    from an8flower.eval.models import load_checkpoint

    _checkpoint(tmp_path / "m.pt")
    model, card = load_checkpoint(tmp_path / "m.pt")
    assert card["num_classes"] == 6 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 6)


# ---------------------------------------------------------------- 10. configs, plugin names, trained models


def test_model_seeds_is_bounded_like_per_class(tmp_path) -> None:
    from an8flower.eval.config import MAX_MODEL_SEEDS, load_config

    toml = tmp_path / "board.toml"
    toml.write_text("model_seeds = 1000000\n")
    with pytest.raises(UsageError, match=f"config file {toml}: model_seeds 1000000 is above the limit of {MAX_MODEL_SEEDS}"):
        load_config(toml)
    toml.write_text(f"model_seeds = {MAX_MODEL_SEEDS}\n")
    assert load_config(toml).model_seeds == MAX_MODEL_SEEDS


@pytest.mark.parametrize("name", ["oracle", "Oracle", "random", "centre", "captum:Saliency", "timm:vit", "lxt:x"])
def test_a_plugin_cannot_register_a_reserved_name(tmp_path, name) -> None:
    from an8flower.baselines import registry
    from an8flower.baselines.plugins import import_explainers

    plugin = tmp_path / "squatter.py"
    plugin.write_text("from an8flower.baselines import Explainer, register_explainer\n\n"
                      f"@register_explainer({name!r})\nclass Squatter(Explainer):\n"
                      "    def explain(self, model, images, targets):\n        return images.mean(1)\n")
    before = dict(registry._REGISTRY)
    with pytest.raises(UsageError, match="reserved"):
        import_explainers(str(plugin))
    assert registry._REGISTRY == before
    assert registry.explainer_class("random").__module__ == "an8flower.baselines.reference"


def test_a_truncated_trained_model_is_discarded_and_retrained(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "b"), variants=["single-6c"], size=64, per_class=4, models=["small-cnn"],
                       explainers=["random"], metrics=["iou_auc"], train={"epochs": 1}, examples=0, plots=False,
                       all_images=True)
    first = run_leaderboard(config, progress=False, log=lambda m: None)
    (ckpt,) = (tmp_path / "b" / "models").iterdir()
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    said: list[str] = []
    again = run_leaderboard(config, progress=False, log=said.append)
    assert any("damaged trained model discarded and retrained" in m and str(ckpt) in m for m in said), said
    assert ckpt.read_bytes() == good  # retrained to the same bytes (deterministic training)
    assert [c["value"] for c in again.cells] == [c["value"] for c in first.cells]


# ---------------------------------------------------------------- 8. a full disk during the leaderboard


def _enospc(path) -> OSError:

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("after", [0, 3])
def test_disk_full_during_the_leaderboard_is_one_line(tmp_path, monkeypatch, after) -> None:

    from an8flower import atomic
    from an8flower.errors import DiskFullError

    real, calls = atomic.atomic_write_bytes, []

    def fill_up(path, data):
        calls.append(path)
        if len(calls) > after:
            raise _enospc(str(path) + ".tmp")
        real(path, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", fill_up)
    out = tmp_path / "b"
    with pytest.raises(DiskFullError) as info:
        run_leaderboard(_board(out), datasets=[squares()], models={"m": ColourDetector()}, progress=False,
                        log=lambda m: None)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{calls[-1]}: the disk is full (writing {calls[-1]}.tmp)")
    assert re.search(r": about [\d.,]+ (bytes|KB) more is needed \([\d.,]+ (bytes|KB) still to write, [\d.,]+ \w+ free there\)$",
                     message), message
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_while_saving_a_trained_model_is_one_line(tmp_path, monkeypatch) -> None:


    import an8flower.eval.train as train_mod
    from an8flower.errors import DiskFullError
    from an8flower.eval.models import build_model

    def full(obj, fh):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fh.name)

    monkeypatch.setattr(torch, "save", full)
    model = build_model("small-cnn", 6)
    with pytest.raises(DiskFullError, match=rf"^{tmp_path / 'm.pt'}: the disk is full \(writing .*\): about [\d.]+ (KB|MB) more"):
        train_mod.save_checkpoint(tmp_path / "m.pt", model, {"architecture": "small-cnn", "num_classes": 6})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 9. the guided-backprop guard knows its graph


class _Rectifies(nn.Module):
    """An nn.ReLU module, then one more rectification written another way."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        self.how = how

    def forward(self, x):
        z = self.relu(self.conv(x)) - 0.1
        z = {"F.threshold": lambda t: F.threshold(t, 0.0, 0.0),
             "torch.maximum": lambda t: torch.maximum(t, torch.zeros_like(t)),
             "F.leaky_relu(z, 0)": lambda t: F.leaky_relu(t, 0.0),
             "F.hardtanh(z, 0, 6)": lambda t: F.hardtanh(t, 0.0, 6.0),
             "z * (z > 0)": lambda t: t * (t > 0),
             "F.gelu": F.gelu,
             "torch.sigmoid": torch.sigmoid}[self.how](z)
        return self.fc(z.mean((2, 3)))


_X = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6) / 18 - 1


@pytest.mark.parametrize("how, op", [("F.threshold", "threshold"), ("torch.maximum", "maximum"),
                                     ("F.leaky_relu(z, 0)", "leaky_relu"), ("F.hardtanh(z, 0, 6)", "hardtanh"),
                                     ("z * (z > 0)", "gt"), ("F.gelu", "gelu"), ("torch.sigmoid", "sigmoid")])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_the_rule_refuses_every_non_linearity_it_did_not_replace(how, op, rule) -> None:

    from an8flower.baselines.rules import modified_gradient

    torch.manual_seed(0)
    net = _Rectifies(how)
    with pytest.raises(UsageError, match=f"relu={rule!r}: _Rectifies .*\\({op} called in a forward\\)"):
        modified_gradient(net, _X, torch.tensor([0]), relu=rule)
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert modified_gradient(net, _X, torch.tensor([0]), relu="gradient").shape == _X.shape


def test_a_gelu_model_is_refused_naming_the_module() -> None:

    from an8flower.baselines import build_explainer

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(2, 3, 8, 8)
    net(x)
    for name in ("guided_backprop", "deconvnet"):
        with pytest.raises(UsageError, match="is defined for networks whose non-linearities are ReLUs: Sequential has "
                                             "a GELU module \\(1\\)"):
            build_explainer(name)(net, x, torch.tensor([0, 1]))


def test_guided_backprop_on_a_vit_is_a_usage_error() -> None:

    timm = pytest.importorskip("timm")
    from an8flower.baselines import build_explainer

    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                                           num_classes=3).eval()
    with pytest.raises(UsageError, match="VisionTransformer has a GELU module \\(blocks.0.mlp.act\\)"):
        build_explainer("guided_backprop")(vit, torch.rand(1, 3, 16, 16), torch.tensor([0]))


def test_relu_networks_with_residuals_pools_and_inactive_clips_pass() -> None:

    from an8flower.baselines.rules import modified_gradient

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.bn, self.relu1, self.relu2 = nn.BatchNorm2d(2), nn.ReLU(), nn.ReLU()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            y = self.relu1(self.bn(self.conv1(x)))
            y = self.relu2(y + 0.5 * self.conv2(y))
            y = F.max_pool2d(y, 2).clamp(min=0.0)  # a clamp that clips nothing here
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))

    torch.manual_seed(0)
    net = Residual().eval()
    t = torch.tensor([1])
    guided = modified_gradient(net, _X, t, relu="guided")
    # by hand: the same network with the clamp removed gives the same map
    net.forward = lambda x: net.fc(torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(
        net.relu2(net.relu1(net.bn(net.conv1(x))) + 0.5 * net.conv2(net.relu1(net.bn(net.conv1(x))))), 2), 1), 1))
    assert torch.allclose(guided, modified_gradient(net, _X, t, relu="guided"), atol=1e-7)


def test_merge_bounds_a_shard_npz_by_its_headers(two_shards, tmp_path) -> None:
    from an8flower.eval.merge import merge_shards

    parts = _shard_copy(two_shards, tmp_path)
    _npz_with_header(parts[0] / "shard" / "group-0.npz", (2, 40000, 40000, 3), "|u1", name="images")
    with pytest.raises(UsageError, match="group-0.npz: array 'images' has shape \\(2, 40000, 40000, 3\\), expected "
                                         "\\(2, 32, 32, '1..3'\\)"):
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
    manifest = json.loads((parts[0] / "shard.json").read_text())
    manifest["groups"][0]["size"] = 10**9
    (parts[0] / "shard.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="shard.json: group 0: 'size' must be an integer from 0 to 4096"):
        merge_shards([str(p) for p in parts], str(tmp_path / "merged"), progress=False, log=lambda m: None)
