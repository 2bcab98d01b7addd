"""Every model-agnostic explainer runs on a tiny ViT unchanged; the board runs end to end with one
(trained by the run, with the ViT recipe), the methods that need ReLUs recorded as cell errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_transformer import TARGETS, tiny_vit

from an8flower.baselines import build_explainer, explainer_class, list_explainers
from an8flower.errors import UsageError

#: Explainers that cannot apply to a GELU transformer, and the words of their refusal.
REFUSED = {"guided_backprop": "ReLU", "deconvnet": "ReLU", "vebi": "transformer"}
#: Cheap options (the test checks the maps, not their quality).
CHEAP = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"steps": 4}, "rise": {"n_masks": 16},
         "occlusion": {"window": 8, "stride": 8}}
#: Library methods that need only the model's input and output (gradients or perturbations).
LIBRARY_AGNOSTIC = {
    "captum:Saliency": {}, "captum:InputXGradient": {}, "captum:IntegratedGradients": {"n_steps": 4},
    "captum:GradientShap": {"n_samples": 4}, "captum:Occlusion": {"patch": 8, "stride": 8},
    "captum:FeatureAblation": {}, "captum:Lime": {"n_samples": 20}, "captum:KernelShap": {"n_samples": 20},
    "captum:ShapleyValueSampling": {"n_samples": 1},
}


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def check_map(out: torch.Tensor) -> None:
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out.flatten(1).amax(1) > out.flatten(1).amin(1)).all()  # not constant in any image


# The oracle reads the batch's masks: it runs on the ViT in the board test below.
@pytest.mark.parametrize("name", [n for n in list_explainers() if n not in REFUSED and n != "oracle"])
def test_every_registered_explainer_explains_a_vit(name, x) -> None:
    check_map(build_explainer(name, **CHEAP.get(name, {}))(tiny_vit(), x, TARGETS))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_cnn_only_explainers_refuse_a_vit_naming_the_reason(name, x) -> None:
    e = build_explainer(name)
    with pytest.raises(UsageError, match=REFUSED[name]):
        if explainer_class(name).requires_fit:
            e.fit(tiny_vit(), [(x, TARGETS)])
        else:
            e(tiny_vit(), x, TARGETS)


@pytest.mark.parametrize("name", sorted(LIBRARY_AGNOSTIC))
def test_captum_model_agnostic_methods_explain_a_vit(name, x) -> None:
    check_map(build_explainer(name, **LIBRARY_AGNOSTIC[name])(tiny_vit(), x, TARGETS))


def test_the_board_runs_a_vit_end_to_end(tmp_path) -> None:
    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import run_leaderboard

    out = tmp_path / "res"
    config = RunConfig(out=str(out), variants=["single-6c"], size=64, per_class=6, all_images=True,
                       models=["vit-tiny"], model_options={"vit-tiny": {"image_size": 64, "patch_size": 16,
                                                                         "num_layers": 2, "num_heads": 2,
                                                                         "hidden_dim": 16, "mlp_dim": 32}},
                       explainers=["oracle", "vit_rollout", "vit_relevance", "gradcam", "guided_backprop"],
                       metrics=["iou_auc", "pointing_game"], train={"epochs": 1}, plots=False)
    name = "vit-tiny[hidden_dim=16,image_size=64,mlp_dim=32,num_heads=2,num_layers=2,patch_size=16]"
    assert config.models == [name]
    run_leaderboard(config, progress=False)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {name}
    assert {r["explainer"] for r in rows} == {"oracle", "vit_rollout", "vit_relevance", "gradcam", "guided_backprop"}
    for r in rows:  # the refused method's cells are empty; the others are scored
        assert (r["value"] in ("", "nan")) == (r["explainer"] == "guided_backprop"), r
    record = json.loads((out / "run.json").read_text())
    errors = [e for e in record["errors"] if e["explainer"] == "guided_backprop"]
    assert errors and "ReLU" in errors[0]["error"]
    trained = record["models"][0]
    assert trained["model"] == name and trained["trained"]
    from an8flower.eval.models import load_checkpoint

    model, card = load_checkpoint(out / trained["source"], name="vit-tiny")  # relative to the results folder
    assert card["model"]["options"]["num_layers"] == 2 and card["training"]["lr"] == 1e-3  # the ViT recipe


@pytest.mark.parametrize("name", ["captum:GuidedBackprop", "captum:Deconvolution", "captum:GuidedGradCam",
                                  "zennit:GuidedBackprop", "zennit:DeconvNet", "zennit:ExcitationBackprop"])
def test_library_relu_rules_refuse_a_vit_instead_of_returning_the_gradient(name, x) -> None:
    """Captum's and Zennit's guided backprop and deconvnet apply their rule at ReLU modules only: on a
    GELU ViT they would return the plain gradient. They are refused, naming the reason."""
    pytest.importorskip(name.split(":")[0])
    from an8flower.baselines.adapters import RELU_RULE_ADAPTERS

    assert name in RELU_RULE_ADAPTERS
    with pytest.raises(UsageError, match=f"{name} needs a ReLU network .* transformer with GELU"):
        build_explainer(name)(tiny_vit(), x, TARGETS)
