"""Model reliance by intervention, with hand-built models whose reliance is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from an8flower.errors import UsageError
from an8flower.eval.metrics import reliance_rank_correlation
from an8flower.eval.reliance import ALL_PARTS, RELIANCE_COLUMNS, Reliance, measure_reliance, reliance_rows
from an8flower.intervene import intervene
from an8flower.render import render
from an8flower.spec import VariantSpec, load_spec

SIZE = 64


def _fixed_head(variant: str) -> VariantSpec:
    """The variant with the flower head always at (0.5, 0.35) and no occluding blades."""
    d = load_spec(variant).to_dict()
    d["nuisance"].update(head_x=[0.5, 0.5], head_y=[0.35, 0.35], occluder_count=[0, 0])
    return VariantSpec.from_dict(d)


class CentreReader(nn.Module):
    """Reads only the 3 x 3 pixels at the head's position (inside the centre disc in every sample):
    logits ``-1e4 * |chroma - chroma(class centre colour)|^2``, so it predicts the class whose centre
    colour is nearest, with probability 1 (ties between the classes sharing that centre colour)."""

    def __init__(self, spec: VariantSpec, size: int) -> None:
        super().__init__()
        j = spec.discriminative.index("centre")
        rgb = torch.tensor([spec.rgb(c[j]) for c in spec.class_colours], dtype=torch.float64)
        self.register_buffer("refs", rgb / rgb.sum(1, keepdim=True))
        self.sharpness = nn.Parameter(torch.tensor(1e4, dtype=torch.float64), requires_grad=False)
        self.y, self.x = round(0.35 * size), round(0.5 * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x[:, :, self.y - 1:self.y + 2, self.x - 1:self.x + 2].double().mean((2, 3))
        chroma = w / w.sum(1, keepdim=True).clamp_min(1e-9)
        return -self.sharpness * ((chroma[:, None, :] - self.refs[None]) ** 2).sum(-1)


class Blind(nn.Module):
    """Constant logits: relies on nothing."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(0.0, 1.0, k)[None], requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_a_model_that_reads_only_the_centre_relies_on_it_only():
    spec = _fixed_head("single-6c")
    model = CentreReader(spec, SIZE)
    indices = list(range(18))
    rel = measure_reliance(model, spec, 0, indices, size=SIZE, chunk=7)
    assert np.array_equal(rel.pred, rel.labels) and np.allclose(rel.prob, 1.0)
    per = rel.per_image()
    centre = spec.part_id("centre")
    assert np.allclose(per[:, centre], 1.0, atol=1e-12)
    assert np.array_equal(np.delete(per, centre, axis=1), np.zeros((len(indices), len(spec.parts) - 1)))
    summary = rel.summary()
    rows = {(r["part"], r["intervention"]): r for r in summary["rows"]}
    assert rows["centre", "repaint"]["follow_rate"] == 1.0 and rows["centre", "repaint"]["drop"] == pytest.approx(1.0)
    for part in ("petals", "leaves", "stem", "clutter"):
        assert rows[part, "recolour"]["drop"] == 0.0 and rows[part, "recolour"]["flip_rate"] == 0.0
        assert rows[part, "remove"]["drop"] == 0.0
    assert ("background", "remove") not in rows and rows["background", "recolour"]["drop"] == 0.0
    # the confusion under repainting is diagonal: the prediction follows the centre
    conf = np.array(summary["confusion"]["centre"])
    assert conf.sum() == len(indices) * (spec.num_classes - 1) and np.count_nonzero(conf - np.diag(np.diag(conf))) == 0
    # an explainer that marks only the centre gets the maximum reliance rank correlation
    samples = [render(spec, 0, i, SIZE) for i in indices]
    parts = torch.from_numpy(np.stack([s.parts for s in samples]))
    heat = (parts == centre).float()
    rrc = reliance_rank_correlation(heat, parts, torch.from_numpy(per))
    assert torch.allclose(rrc, torch.ones(len(indices), dtype=torch.float64))


def test_a_model_blind_to_the_leaves_in_double_12c():
    """Reading the centre only, it splits its probability over the 3 classes of that centre colour:
    repainting or removing the leaves never moves it, repainting the centre takes all 1/3."""
    spec = _fixed_head("double-12c")
    rel = measure_reliance(CentreReader(spec, SIZE), spec, 0, range(24), size=SIZE)
    assert np.allclose(rel.prob, 1 / 3)
    per = rel.per_image()
    assert np.allclose(per[:, spec.part_id("centre")], 1 / 3)
    assert np.array_equal(per[:, spec.part_id("leaves")], np.zeros(24))
    rows = {(r["part"], r["intervention"]): r for r in rel.summary()["rows"]}
    assert rows["leaves", "repaint"]["drop"] == 0.0 and rows["leaves", "remove"]["drop"] == 0.0
    assert rows["centre", "repaint"]["follow_rate"] < 1.0  # ties: it cannot tell the leaves apart
    assert rows[ALL_PARTS, "repaint"]["n"] == 24


def test_runner_up_and_its_change_mask():
    spec = load_spec("double-12c")
    model = Blind(spec.num_classes)  # probabilities increase with the class index
    rel = measure_reliance(model, spec, 3, [0, 5, 11], size=SIZE)
    assert rel.runner_up.tolist() == [11, 11, 10]  # the most probable class other than the target
    for i, idx in enumerate([0, 5, 11]):
        orig, cf = render(spec, 3, idx, SIZE), intervene(spec, 3, idx, SIZE, label=int(rel.runner_up[i]))
        assert np.array_equal(rel.changed[i], (orig.image != cf.image).any(axis=2))
        assert not (rel.changed[i] & ~orig.mask).any()
    assert np.array_equal(rel.drop[:, :, 0], np.zeros((3, len(spec.parts))))
    assert np.isnan(rel.drop[:, spec.part_id("background"), 1]).all()
    assert np.array_equal(rel.per_image(), np.zeros((3, len(spec.parts))))


def test_originals_are_compared_with_the_reference_and_round_trip():
    spec = load_spec("single-6c")
    ref = torch.from_numpy(np.stack([render(spec, 1, i, SIZE).image for i in (2, 3)])).permute(0, 3, 1, 2)
    ref[1, 0, 0, 0] ^= 1
    rel = measure_reliance(Blind(6), spec, 1, [2, 3], size=SIZE, reference=ref)
    assert rel.originals_match == 1
    back = Reliance.from_arrays(rel.to_arrays())
    assert back.summary() == rel.summary() and np.array_equal(back.changed, rel.changed)
    rows = reliance_rows(rel.summary(), {"dataset": "an8flower", "variant": "single-6c", "model": "blind"})
    assert set(rows[0]) == set(RELIANCE_COLUMNS) and len(rows) == len(rel.summary()["rows"])


def test_bad_arguments():
    spec = load_spec("single-6c")
    with pytest.raises(UsageError, match="no image"):
        measure_reliance(Blind(6), spec, 0, [])
    with pytest.raises(UsageError, match="2 labels for 1"):
        measure_reliance(Blind(6), spec, 0, [1], labels=[1, 2])
    with pytest.raises(UsageError, match=r"logits \(B, 6\)"):
        measure_reliance(Blind(5), spec, 0, [1], size=SIZE)


# ----------------------------------------------------------------------------- in the leaderboard


def test_leaderboard_writes_reliance_and_the_model_aware_columns(tmp_path):
    import csv
    import json
    import math

    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import run_leaderboard

    spec = _fixed_head("single-6c")
    spec_file = tmp_path / "fixed.json"
    spec_file.write_text(spec.to_json())
    config = RunConfig(out=str(tmp_path / "res"), variants=[str(spec_file)], size=SIZE, per_class=5, all_images=True,
                       explainers=["oracle", "random", "centre"],
                       metrics=["counterfactual_mass", "reliance_rank_correlation", "contrastivity"],
                       model_metric_images=4, examples=2, plots=True)
    summary = run_leaderboard(config, models={"centre-reader": CentreReader(spec, SIZE)}, progress=False)
    out = tmp_path / "res"
    assert (out / f"reliance_an8flower_{spec.name}_centre-reader_test.png").is_file()
    with open(out / "reliance.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(RELIANCE_COLUMNS)
    by = {(r["part"], r["intervention"]): r for r in rows}
    assert float(by["centre", "repaint"]["follow_rate"]) == 1.0 and float(by["petals", "remove"]["drop"]) == 0.0
    assert "Model reliance by intervention (6 images" in summary.markdown and "| **centre** |" in summary.markdown
    cells = {(c["explainer"], c["metric"]): c for c in summary.cells}
    # oracle: contrastivity 1 on every image; CF mass = changed share of the mask; reliance corr. 1
    # (the model relies on the centre only, the mask is the centre)
    assert cells["oracle", "contrastivity"]["scores"] == [1.0] * 4
    assert cells["oracle", "reliance_rank_correlation"]["value"] == pytest.approx(1.0)
    test = [render(spec, 0, i, SIZE) for i in range(6 * 4, 6 * 5)]
    rel = measure_reliance(CentreReader(spec, SIZE), spec, 0, range(24, 30), size=SIZE)
    want = [float(c.sum() / s.mask.sum()) for c, s in zip(rel.changed, test, strict=True)]
    assert cells["oracle", "counterfactual_mass"]["scores"] == pytest.approx(want)
    # class-insensitive references have no contrast: undefined, not 0
    assert cells["random", "contrastivity"]["n"] == 0 and math.isnan(cells["centre", "contrastivity"]["value"])
    doc = json.loads((out / "leaderboard.json").read_text())
    meta = doc["tables"][0]["meta"]["reliance"]
    assert meta["originals_match"] == 6 and len(meta["confusion"]["centre"]) == 6
    assert "reliance" in summary.record["timings"]["metrics"]
