"""`an8flower reproduce`: named explainer variants, model seeds, the stride-fix table, the note's tables."""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from an8flower.baselines import VEBI
from an8flower.baselines.spec import split_explainer_name
from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.data import PreparedData, TensorSplit
from an8flower.eval.reproduce import EXPLAINERS, VEBI_ROWS, ReproSettings, _stride_table, cuts, reproduction_markdown
from an8flower.eval.runner import run_leaderboard
from an8flower.eval.scoring import explainer_options

# ------------------------------------------------------------------------- named variants


def test_split_explainer_name_reads_json_values_and_strings() -> None:
    assert split_explainer_name("vebi") == ("vebi", {})
    assert split_explainer_name("vebi[k=1,stride_fix=false,labels=predicted]") == (
        "vebi", {"k": 1, "stride_fix": False, "labels": "predicted"})
    assert split_explainer_name('vebi[layers=["a", "b"],mu=5.5]') == ("vebi", {"layers": ["a", "b"], "mu": 5.5})
    for bad in ("vebi[k=1", "[k=1]", "vebi[k]", "vebi[k=1,k=2]"):
        with pytest.raises(UsageError, match="explainer"):
            split_explainer_name(bad)


def test_variant_options_stack_on_the_runs_options_for_the_base_explainer() -> None:
    config = RunConfig(explainer_options={"vebi": {"mu": 7.0, "k": 2}, "vebi[k=1]": {"top_n": 4}})
    assert explainer_options("vebi", "small-cnn", config) == {"mu": 7.0, "k": 2}
    assert explainer_options("vebi[k=1]", "small-cnn", config) == {"mu": 7.0, "k": 1, "top_n": 4}
    # an8Flower's VEBI default (mu = 5) applies under the variant's options; not elsewhere.
    assert explainer_options("vebi[k=5]", "small-cnn", RunConfig()) == {"mu": 5.0, "k": 5}
    assert explainer_options("vebi[k=5]", "lenet", RunConfig(), "mnist") == {"k": 5}


def squares(n: int = 6, size: int = 16) -> PreparedData:
    """Red or green 6x6 squares (class = colour) on grey; the mask is the square."""
    colours = torch.tensor([[230, 25, 25], [25, 200, 25]], dtype=torch.uint8)
    images = torch.full((n, 3, size, size), 120, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    labels = torch.arange(n) % 2
    for i in range(n):
        y, x = i % (size - 6), (2 * i) % (size - 6)
        images[i, :, y : y + 6, x : x + 6] = colours[labels[i]].view(3, 1, 1)
        masks[i, y : y + 6, x : x + 6] = True
    test = TensorSplit(images, labels, masks, masks.to(torch.uint8), ids=range(n))
    return PreparedData("toy", "squares", "test", test.sha256(), ["red", "green"], ["background", "square"], ["square"],
                        None, None, test, size)


class Detector(nn.Module):
    """logit_c = sum of relu(<w_c, x> - b_c): fires on pixels of colour c only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]).view(2, 3, 1, 1))
            self.conv.bias.fill_(-0.3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)).sum(dim=(2, 3))


def test_variants_are_distinct_rows_with_their_own_options(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "r"), explainers=["gradient", "gradient[reduction=sum]"],
                       metrics=["energy_pointing_game"], plots=False)
    summary = run_leaderboard(config, datasets=[squares()], models={"det": Detector()}, progress=False)
    cells = {c["explainer"]: c for c in summary.cells}
    assert set(cells) == {"gradient", "gradient[reduction=sum]"}
    assert cells["gradient"]["options"] == {} and cells["gradient[reduction=sum]"]["options"] == {"reduction": "sum"}
    # The signed sum over colour channels differs from the default max of |.|: different maps, different scores.
    assert cells["gradient"]["scores"] != cells["gradient[reduction=sum]"]["scores"]
    assert "| gradient[reduction=sum] |" in summary.markdown
    assert summary.record["explainers"]["gradient[reduction=sum]"]["options"] == {"reduction": "sum"}
    with pytest.raises(UsageError, match="unknown explainer 'nope'"):
        run_leaderboard(RunConfig(out=str(tmp_path / "x"), explainers=["nope[k=1]"]), datasets=[squares()],
                        models={"det": Detector()}, progress=False)


def test_model_seeds_train_one_classifier_per_seed_and_report_rank_spread(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "r"), variants=["single-6c"], size=64, per_class=10, max_images=4,
                       model_seeds=2, explainers=["oracle", "gradient", "guided_backprop", "random", "centre"],
                       metrics=["iou_auc", "pointing_game"], plots=False, train={"epochs": 1, "batch_size": 16})
    summary = run_leaderboard(config, progress=False)
    models = summary.record["models"]
    assert [m["seed"] for m in models] == [0, 1] and models[0]["hash"] != models[1]["hash"]
    assert summary.record["seeds"]["models"] == [0, 1] and summary.record["seeds"]["dataset"] == 0
    assert {c["seed"] for c in summary.cells} == {0, 1}
    doc = json.loads((tmp_path / "r" / "leaderboard.json").read_text())
    assert [t["seed"] for t in doc["tables"]] == [0, 1]
    spread = doc["model_seeds"][0]
    assert spread["seeds"] == [0, 1] and set(spread["explainers"]) == {"gradient", "guided_backprop"}
    assert set(spread["metrics"]["iou_auc"]["mean"].values()) <= {1.0, 1.5, 2.0}
    assert "## Across model seeds: an8flower `single-6c` · `small-cnn`" in summary.markdown
    with pytest.raises(UsageError, match="model_seeds"):
        run_leaderboard(RunConfig(out=str(tmp_path / "x"), model_seeds=2), datasets=[squares()],
                        models={"det": Detector()}, progress=False)


# ------------------------------------------------------------------------------ stride fix


def strided_net() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, stride=2, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 4, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(4, 2)),
    ])).eval()


def test_stride_table_measures_vebi_and_deconvnet_with_and_without_the_fix(tmp_path) -> None:
    torch.manual_seed(0)
    net = strided_net()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        labels = net(images.float() / 255).argmax(1)  # every image "correctly classified"
    data = PreparedData("toy", "noise", "test", "h", ["a", "b"], [], [], None, None,
                        TensorSplit(images, labels, None, None, range(6)), 32)
    vebi = VEBI(k=1, layers=["relu2"]).set_weights(["relu2"], [4], torch.ones(4, 2))
    settings = ReproSettings(out=str(tmp_path), spectral_images=5, batch_size=4)
    out = _stride_table(net, vebi, data, settings, str(tmp_path), "toy")
    assert out["stride"] == 4 and out["n_images"] == 5 and set(out["rows"]) == {"vebi", "deconvnet"}
    for row in out["rows"].values():
        assert 0 <= row["with_fix"][0] <= 1 and 0 <= row["without_fix"][0] <= 1
        assert row["difference"][0] == pytest.approx(row["without_fix"][0] - row["with_fix"][0])
    # Without the fix, the transposed stride-4 path leaves a grid of period 4: most energy there.
    assert out["rows"]["deconvnet"]["without_fix"][0] > out["chance"] > out["rows"]["deconvnet"]["with_fix"][0]
    assert vebi.stride_fix is True  # restored
    assert os.path.isfile(tmp_path / out["figure"])
    plain = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    none = _stride_table(plain, vebi, data, settings, str(tmp_path), "plain")
    assert none["stride"] == 1 and none["rows"] == {} and "no strided convolution" in none["reason"]


# ----------------------------------------------------------------------- the note's tables


def synthetic_result() -> dict:
    """A run_reproduction result with one group, hand-filled."""
    from an8flower.eval.metaeval import annotate_tables
    from an8flower.eval.report import leaderboard_tables

    rng = np.random.default_rng(0)
    info = {"iou_auc": {"label": "IoU-AUC", "higher_is_better": True, "kind": "mask"},
            "pointing_game": {"label": "pointing", "higher_is_better": True, "kind": "mask"}}
    cells = []
    for i, e in enumerate(EXPLAINERS):
        for m in info:
            s = np.clip(rng.normal(1.0 if e == "oracle" else 0.1 + 0.03 * i, 0.01, 20), 0, 1)
            cells.append({"dataset": "an8flower", "variant": "single-6c", "model": "small-cnn", "split": "test", "seed": 0,
                          "explainer": e, "metric": m, "options": {}, "error": None, "value": float(s.mean()), "n": 20,
                          "scores": s.tolist(), "image_ids": list(range(20)), "extra": {}})
    tables = leaderboard_tables(cells, info, {("an8flower", "single-6c", "small-cnn", "test", 0): {"n_images": 20}})
    annotate_tables(tables, cells, info)
    tables[0]["iou_points"] = {e: [0.5, 0.4, 0.3, 0.2, 0.1] for e in EXPLAINERS}
    rows = {r["explainer"]: r for r in tables[0]["rows"]}
    rows["vebi[k=5]"]["scores"] = rows["vebi"]["scores"]  # as when no class has more than 3 relevant features
    row = {"accuracy": 0.0, "probability": 0.0, "others": 1.0, "accuracy_drop": 0.9, "probability_drop": 0.8,
           "others_drop": 0.0}
    group = {"variant": "single-6c", "model": "small-cnn", "seed": 0, "accuracy": {"test": 1.0},
             "vebi": {"layers": 8, "features": 352, "relevant_per_class": [3, 4]},
             "removal": {"classes": [{"class": 0, "n_channels": 3, "intact": {"accuracy": 1.0}, "relevant": row,
                                      "random": row, "most_active": row, "overlap": 0.5}],
                         "skipped": [1], "draws": 5, "n_test": 40,
                         "summary": {"relevant": {"n_classes": 1, "channels": 3.0, "accuracy_drop": [0.9, None],
                                                  "probability_drop": [0.8, None], "others_drop": [0.0, None]},
                                     "random": {"n_classes": 1, "channels": 3.0, "accuracy_drop": [0.123, 0.05],
                                                "probability_drop": [0.1, 0.02], "others_drop": [0.0, 0.0]}}},
             "stride": {"stride": 1, "rows": {}, "reason": "no strided convolution: nothing to fix"},
             "sheets": [{"class": 0, "figure": "sheet_x_class00.png"}], "iou_figure": "iou.png"}
    resnet = dict(group, model="resnet18", stride={"stride": 16, "chance": 0.642, "rows": {
        "vebi": {"with_fix": [0.31, 0.02], "without_fix": [0.52, 0.03], "difference": [0.21, 0.01], "n": 64}}})
    settings = {"variants": ["single-6c"], "models": ["small-cnn"], "size": 112, "per_class": 100, "max_images": 60,
                "seed": 0, "model_seeds": 1, "top_n": 10}
    return {"command": ["an8flower", "reproduce", "--out", "x"], "settings": settings, "cuts": ["images per class: 100 instead of 1000"],
            "board": {"tables": tables, "metrics": info, "models": [{"variant": "single-6c", "model": "small-cnn", "seed": 0,
                                                                      "accuracy": {"test": 0.99}}], "timings": {}},
            "groups": [group, resnet], "mnist": None, "imagenet": None,
            "timings": {"data": 1.0, "board": 10.0, "feature removal": 2.0, "total": 13.0}}


def test_the_note_writes_every_table_from_a_result() -> None:
    md = reproduction_markdown(synthetic_result())
    for head in ("## 1. VEBI against the paper's baselines", "## 2. Feature removal", "## 3. The stride-fix artefact",
                 "## 4. Interpretation sheets", "## Flagged metrics", "## Wall time"):
        assert head in md
    assert "* images per class: 100 instead of 1000" in md
    for name in VEBI_ROWS:  # every ablation is a row of the main table, with what it changes
        assert f"| `{name}` | {VEBI_ROWS[name]} |" in md
    assert "| IoU-AUC ↑ | IoU@0.1 | IoU@0.3 | IoU@0.5 | IoU@0.7 | IoU@0.9 | pointing ↑ |" in md
    assert "| VEBI's relevant channels of the class | 3.0 | 0.900 | 0.800 | 0.000 |" in md
    assert "| as many random channels of the same layers (mean of 5 draws) | 3.0 | 0.123 ± 0.050 |" in md
    assert "50% of the most active channels are relevant ones; classes without relevant features (left out): [1]" in md
    assert "| single-6c | resnet18 | 16 | vebi | 0.310 ± 0.020 | 0.520 ± 0.030 | 0.210 ± 0.010 | 0.642 | 64 |" in md
    assert "| single-6c | small-cnn | 1 | – | n/a |" in md and "no strided convolution: nothing to fix" in md
    assert "![single-6c small-cnn class 0](reproduction_files/sheet_x_class00.png)" in md
    assert "| board | 10.0 | 77% |" in md and "| total | 13.0 | |" in md
    assert "Meta-evaluation (200 paired bootstrap" in md
    assert "`vebi[k=5]` score as `vebi` in every column here" in md


def test_cuts_list_every_departure_from_the_defaults() -> None:
    assert cuts(ReproSettings()) == []
    got = cuts(ReproSettings(per_class=100, models=["small-cnn"], train={"epochs": 10}))
    assert "images per class: 100 instead of 1000" in got and "models: small-cnn instead of small-cnn, resnet18" in got
    assert "training epochs: 10 instead of 40" in got
    assert "vebi options: lasso_tol = 0.001" in cuts(ReproSettings(explainer_options={"vebi": {"lasso_tol": 1e-3}}))
    with pytest.raises(UsageError, match="--per-class"):
        ReproSettings(per_class=0)
    with pytest.raises(UsageError, match="--imagenet ROOT and --imagenet-weights"):
        ReproSettings(imagenet="/data")


# -------------------------------------------------------------------------- end to end


def _idx(path: str, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): 0, 0, type 0x08, ndim, big-endian uint32 sizes, uint8 data."""
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def tiny_mnist(root) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 30, (n, 28, 28))
        for i, y in enumerate(labels):  # a bright bar whose row tells the digit
            images[i, 2 + 2 * y : 4 + 2 * y, 4:24] = 255
        _idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"), images)
        _idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), labels)


@pytest.mark.slow
def test_reproduce_tiny_writes_every_table(tmp_path, capsys) -> None:
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    tiny_mnist(mnist)
    out = tmp_path / "repro"
    assert main(["reproduce", "--tiny", "--out", str(out), "--model", "small-cnn", "--mnist", str(mnist),
                 "--mnist-train", "60", "--mnist-test", "20", "--quiet"]) == 0
    md = (out / "reproduction.md").read_text()
    for head in ("## 1. VEBI against the paper's baselines", "### `single-6c` · `small-cnn`", "## 2. Feature removal",
                 "## 3. The stride-fix artefact", "## 4. Interpretation sheets", "## MNIST (LeNet, mask-free metrics)",
                 "## Flagged metrics", "## Wall time"):
        assert head in md, head
    for name in EXPLAINERS:
        assert f"| `{name}` |" in md, name
    assert "| VEBI's relevant channels of the class |" in md and "| single-6c | small-cnn | 1 | – |" in md
    result = json.loads((out / "reproduction.json").read_text())
    assert set(result["timings"]) >= {"data", "board", "vebi fit", "feature removal", "stride fix", "sheets", "mnist",
                                      "total", "report"}
    table = result["board"]["tables"][0]
    oracle = next(r for r in table["rows"] if r["explainer"] == "oracle")
    assert oracle["scores"]["iou_auc"]["mean"] == 1.0 and set(table["metaeval"]["metrics"]) == set(table["metrics"])
    for g in result["groups"]:
        for sheet in g["sheets"]:
            assert (out / "reproduction_files" / sheet["figure"]).is_file()
    assert (out / "reproduction_files" / g["iou_figure"]).is_file()
    m = result["mnist"]["board"]["tables"][0]
    assert m["dataset"] == "mnist" and m["metrics"] == ["deletion_auc", "insertion_auc", "randomisation"]
    assert {r["explainer"] for r in m["rows"]} == {"vebi", "upsampled_activation", "deconvnet", "guided_backprop",
                                                  "gradcam", "random", "centre"}
    assert (out / "board" / "leaderboard.md").is_file() and (out / "mnist" / "run.json").is_file()


def fake_imagenet(root, train: bool) -> None:
    """LOC-style ILSVRC12: val/<wnid>/ and (optionally) train/<wnid>/ JPEGs, the mapping and the val boxes."""
    from PIL import Image

    wnids = ["n01000001", "n02000002", "n03000003"]
    rows = []
    for n in range(1, 7):
        wnid = wnids[n % 3]
        os.makedirs(root / "val" / wnid, exist_ok=True)
        stem = f"ILSVRC2012_val_{n:08d}"
        Image.fromarray(np.random.default_rng(n).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
            root / "val" / wnid / f"{stem}.JPEG", quality=95)
        rows.append(f"{stem},{wnid} 20 10 59 49 \n")
        if train:
            os.makedirs(root / "train" / wnid, exist_ok=True)
            Image.fromarray(np.random.default_rng(100 + n).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
                root / "train" / wnid / f"{wnid}_{n}.JPEG", quality=95)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {i}\n" for i, w in enumerate(wnids)))
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))


@pytest.mark.parametrize("train", [True, False])
def test_imagenet_part_fits_vebi_on_training_images_when_there_are_some(tmp_path, train) -> None:
    from an8flower.eval.models import build_model
    from an8flower.eval.reproduce import TINY, _imagenet_part
    from an8flower.eval.train import model_card, save_checkpoint

    fake_imagenet(tmp_path / "inet", train)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 3, seed=0), model_card("small-cnn", 3, (3, 64, 64), {}, {}, seed=0))
    settings = ReproSettings(**{**TINY, "out": str(tmp_path / "r"), "tiny": True, "imagenet": str(tmp_path / "inet"),
                                "imagenet_weights": str(ckpt), "imagenet_model": "small-cnn"})
    part = _imagenet_part(settings, progress=False, log=lambda m: None)
    table = part["board"]["tables"][0]
    assert table["dataset"] == "ilsvrc12" and table["metrics"] == ["pointing_game", "energy_pointing_game"]
    rows = {r["explainer"]: r for r in table["rows"]}
    assert rows["oracle"]["scores"]["pointing_game"]["mean"] == 1.0 and set(rows) >= {"vebi", "gradcam", "centre"}
    vebi_error = rows["vebi"]["scores"]["pointing_game"].get("error")
    if train:  # two training images per class read from train/<wnid>/, VEBI fitted, no error
        assert part["note"] is None and vebi_error is None
    else:
        assert "no ILSVRC12 training images" in part["note"] and "training split" in vebi_error
