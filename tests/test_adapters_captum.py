"""``captum:<Name>`` adapters: equal to a direct Captum call plus our reduction, batching, hygiene."""

from __future__ import annotations

import inspect
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_explainers import Bomb, assert_no_hooks
from torch import nn

from an8flower.baselines import build_explainer, explainer_class, list_explainers, reduce_channels
from an8flower.baselines.adapters import BOARD_ADAPTERS, BOARD_OPTIONS, list_adapter_explainers
from an8flower.errors import UsageError
from an8flower.eval.models import build_model

captum_attr = pytest.importorskip("captum.attr")
from an8flower.baselines.adapters.captum import grid_mask, slic_mask  # noqa: E402

B, S = 3, 16
TARGETS = torch.tensor([1, 3, 0])


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", 4).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))


def direct(cls_name: str, model: nn.Module, x: torch.Tensor, init: dict | None = None, seed: int = 0, **call):
    """Captum's own call, as its documentation writes it, under the seeds the adapter uses."""
    cls = getattr(captum_attr, cls_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)  # GradientShap draws its path coefficients with NumPy
        return cls(model, **(init or {})).attribute(x.clone().requires_grad_(True), **call).detach()


def grid(patch: int) -> torch.Tensor:
    """Feature ids of a patch grid on S x S, written out."""
    cells = S // patch
    ids = torch.arange(cells * cells).view(cells, cells)
    return ids.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[None, None]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * float(theirs.abs().max().clamp(min=1e-12)))


def noise_baselines(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, S, S), generator=torch.Generator().manual_seed(seed))


# name, adapter options, direct call's (init, call) and the reduction the adapter applies by default
CASES = {
    "Saliency": ({}, {}, {}, "abs_max"),
    "InputXGradient": ({}, {}, {}, "abs_sum"),
    "IntegratedGradients": ({"n_steps": 5}, {}, {"baselines": 0.0, "n_steps": 5}, "abs_sum"),
    "DeepLift": ({"baselines": 0.5}, {}, {"baselines": 0.5}, "abs_sum"),
    "DeepLiftShap": ({"n_baselines": 3}, {}, {"baselines": noise_baselines(3)}, "abs_sum"),
    "GradientShap": ({"n_samples": 4, "stdevs": 0.1}, {}, {"baselines": noise_baselines(8), "n_samples": 4,
                                                         "stdevs": 0.1}, "abs_sum"),
    "GuidedBackprop": ({}, {}, {}, "abs_max"),
    "Deconvolution": ({}, {}, {}, "abs_max"),
    "Occlusion": ({"patch": 4, "stride": 2}, {}, {"baselines": 0.0, "sliding_window_shapes": (3, 4, 4),
                                                 "strides": (3, 2, 2)}, "sum"),
    "FeatureAblation": ({"patch": 4}, {}, {"baselines": 0.0, "feature_mask": grid(4)}, "sum"),
    "ShapleyValueSampling": ({"patch": 8, "n_samples": 2}, {}, {"baselines": 0.0, "feature_mask": grid(8),
                                                                "n_samples": 2}, "sum"),
    "KernelShap": ({"patch": 8, "n_samples": 10}, {}, {"baselines": 0.0, "feature_mask": grid(8), "n_samples": 10},
                   "sum"),
    "Lime": ({"patch": 8, "n_samples": 10}, {}, {"baselines": 0.0, "feature_mask": grid(8), "n_samples": 10}, "sum"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_input_attribution_equals_a_direct_captum_call(model, x, name) -> None:
    opts, init, call, reduction = CASES[name]
    ours = build_explainer(f"captum:{name}", **opts)(model, x, TARGETS)
    theirs = direct(name, model, x, init, target=TARGETS, **call)
    close(ours, reduce_channels(theirs, reduction))


def test_guided_gradcam_uses_the_named_layer(model, x) -> None:
    ours = build_explainer("captum:GuidedGradCam", layer="features.relu3")(model, x, TARGETS)
    theirs = direct("GuidedGradCam", model, x, {"layer": model.features.relu3}, target=TARGETS)
    close(ours, reduce_channels(theirs, "abs_max"))
    auto = build_explainer("captum:GuidedGradCam")(model, x, TARGETS)  # layer="auto": features.relu4
    close(auto, reduce_channels(direct("GuidedGradCam", model, x, {"layer": model.features.relu4}, target=TARGETS),
                                "abs_max"))


@pytest.mark.parametrize(
    "name, opts, call",
    [("LayerGradCam", {}, {}), ("LayerGradCam", {"relu_attributions": True}, {"relu_attributions": True}),
     ("LayerActivation", {}, {}), ("LayerConductance", {"n_steps": 4}, {"n_steps": 4, "baselines": 0.0}),
     ("LayerGradientXActivation", {}, {})],
)
def test_layer_attribution_is_reduced_then_upsampled(model, x, name, opts, call) -> None:
    ours = build_explainer(f"captum:{name}", layer="features.relu3", **opts)(model, x, TARGETS)
    if name != "LayerActivation":
        call["target"] = TARGETS
    theirs = direct(name, model, x, {"layer": model.features.relu3}, **call)  # (B, K, 4, 4) at 16 px
    assert theirs.shape[2:] == (4, 4)
    expected = F.interpolate(theirs.sum(1, keepdim=True), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    close(ours, expected)


def test_noise_tunnel_option_wraps_the_method(model, x) -> None:
    ours = build_explainer("captum:Saliency", noise_tunnel="smoothgrad_sq", nt_samples=4, nt_stdevs=0.2,
                           seed=3)(model, x, TARGETS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
        theirs = nt.attribute(x.clone().requires_grad_(True), nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.2,
                              target=TARGETS).detach()
    close(ours, reduce_channels(theirs, "abs_max"))
    plain = build_explainer("captum:Saliency")(model, x, TARGETS)
    assert not torch.allclose(ours, plain)


def test_grid_and_superpixel_masks() -> None:
    m = grid_mask(5, 7, 3, torch.device("cpu"))[0, 0]
    # 3 px cells, cut at the border: 2 rows x 3 columns of cells
    expected = torch.tensor([[0, 0, 0, 1, 1, 1, 2]] * 3 + [[3, 3, 3, 4, 4, 4, 5]] * 2)
    assert torch.equal(m, expected)
    img = torch.zeros(2, 3, 20, 20)
    img[:, 0, :, 10:] = 1.0  # left half black, right half red
    labels = slic_mask(img, n_segments=4, compactness=10.0)
    assert labels.shape == (2, 1, 20, 20) and labels.dtype == torch.long
    for b in range(2):  # superpixels from 0, none straddling the colour edge
        left, right = set(labels[b, 0, :, :10].unique().tolist()), set(labels[b, 0, :, 10:].unique().tolist())
        assert min(left | right) == 0 and len(left | right) > 1 and not left & right


def test_slic_feature_mask_is_what_captum_receives(model, x) -> None:
    ours = build_explainer("captum:FeatureAblation", feature_mask="slic", n_segments=6)(model, x, TARGETS)
    mask = slic_mask(x, 6, 10.0)
    close(ours, reduce_channels(direct("FeatureAblation", model, x, target=TARGETS, baselines=0.0, feature_mask=mask),
                                "sum"))


def test_default_patch_is_an_eighth_of_the_side(model) -> None:
    x = torch.rand(1, 3, 32, 32)
    ours = build_explainer("captum:FeatureAblation")(model, x, torch.tensor([2]))
    assert torch.unique(ours).numel() <= 64  # an 8 x 8 grid of 4 px cells: one value per cell
    assert torch.equal(ours[0, :4, :4], ours[0, :1, :1].expand(4, 4))


DETERMINISTIC = ["Saliency", "InputXGradient", "IntegratedGradients", "DeepLift", "DeepLiftShap", "GuidedBackprop",
                 "Deconvolution", "GuidedGradCam", "Occlusion", "FeatureAblation", "LayerGradCam", "LayerActivation"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_per_image(model, x, name) -> None:
    opts = CASES.get(name, ({},))[0]
    e = build_explainer(f"captum:{name}", **opts)
    batch = e(model, x, TARGETS)
    single = torch.cat([e(model, x[i : i + 1], TARGETS[i : i + 1]) for i in range(B)])
    # batched convolutions round differently: equal to float32 precision of the map's scale
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5 * float(single.abs().max()))


@pytest.mark.parametrize("name", ["Saliency", "IntegratedGradients", "DeepLift", "GuidedBackprop", "GuidedGradCam",
                                  "Occlusion", "Lime", "LayerGradCam", "LayerConductance"])
def test_no_hooks_and_state_restored_after_exception(name) -> None:
    torch.manual_seed(0)
    inner = build_model("small-cnn", 3)
    model = nn.Sequential(OrderedDict(inner=inner, bomb=Bomb(after=2))).train()
    model.inner.classifier.weight.requires_grad_(False)
    opts = {"layer": "inner.features.relu4"} if "GradCam" in name or name.startswith("Layer") else {}
    with pytest.raises(RuntimeError, match="bomb"):
        build_explainer(f"captum:{name}", **opts)(model, torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    assert_no_hooks(model)
    assert model.training and all(m.training for m in model.modules())
    assert not model.inner.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "inner.classifier.weight")
    assert all(p.grad is None for p in model.parameters())


def test_every_offered_method_runs_or_fails_with_the_librarys_message(model, x) -> None:
    for name in list_adapter_explainers():
        if not name.startswith("captum:"):
            continue
        cls = explainer_class(name)
        opts = {k: v for k, v in {"patch": 8, "n_samples": 2, "n_steps": 4, "n_baselines": 2}.items()
                if k in inspect.signature(cls.__init__).parameters}
        e = build_explainer(name, **opts)
        if name in ("captum:LRP", "captum:LayerLRP"):  # Captum's LRP has no rule for our Normalize module
            with pytest.raises(TypeError, match="Normalize"):
                e(model, x[:1], TARGETS[:1])
        else:
            out = e(model, x[:1], TARGETS[:1])
            assert out.shape == (1, S, S) and torch.isfinite(out).all(), name
        assert_no_hooks(model)


def test_options_and_names_are_checked() -> None:
    assert "captum:Saliency" not in list_explainers()  # the default list stays the built-in one
    assert "captum:Saliency" in list_explainers(include_adapters=True)
    assert set(BOARD_OPTIONS) <= set(BOARD_ADAPTERS)
    for name in BOARD_ADAPTERS:
        build_explainer(name, **BOARD_OPTIONS.get(name, {}))
    with pytest.raises(UsageError, match="no option 'steps'.*n_steps"):
        build_explainer("captum:IntegratedGradients", steps=4)
    with pytest.raises(UsageError, match="n_steps must be int"):
        build_explainer("captum:IntegratedGradients", n_steps="many")
    with pytest.raises(UsageError, match="reduction='max' is not one of"):
        build_explainer("captum:Saliency", reduction="max")
    with pytest.raises(UsageError, match="has no attribution class 'Salience'"):
        explainer_class("captum:Salience")
    with pytest.raises(UsageError, match="FeaturePermutation is not offered: permutes"):
        explainer_class("captum:FeaturePermutation")
    with pytest.raises(UsageError, match="NeuronGradient is not offered: attributes one neuron"):
        explainer_class("captum:NeuronGradient")
    with pytest.raises(UsageError, match="adapter prefixes are captum:, zennit:, gradcam:"):
        explainer_class("shap:Deep")
    assert explainer_class("captum:Saliency") is explainer_class("captum:Saliency")
    e = build_explainer("captum:IntegratedGradients", n_steps=8)
    assert e.name == "captum:IntegratedGradients" and e.options()["n_steps"] == 8 and e.reduction == "abs_sum"


def test_layer_the_model_lacks_is_a_clear_error(model, x) -> None:
    with pytest.raises(UsageError, match=r"layer='features\.relu9'"):
        build_explainer("captum:LayerGradCam", layer="features.relu9")(model, x, TARGETS)
    assert_no_hooks(model)


def test_missing_captum_is_a_usage_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(UsageError, match=r'pip install "an8flower\[captum\]"'):
        build_explainer("captum:Saliency")
    assert not any(n.startswith("captum:") for n in list_adapter_explainers())


@pytest.mark.parametrize(
    "ours, theirs, opts",
    [("gradient", "captum:Saliency", {}), ("input_x_gradient", "captum:InputXGradient", {}),
     ("guided_backprop", "captum:GuidedBackprop", {}), ("deconvnet", "captum:Deconvolution", {}),
     ("integrated_gradients", "captum:IntegratedGradients", {"n_steps": 32}),
     ("gradcam", "captum:LayerGradCam", {"relu_attributions": True})],
)
def test_duplicates_agree_with_ours(model, x, ours, theirs, opts) -> None:
    """The pairs :data:`~an8flower.baselines.adapters.DUPLICATES` calls equal."""
    a = build_explainer(ours)(model, x, TARGETS)
    b = build_explainer(theirs, **opts)(model, x, TARGETS)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_baselines_import_no_adapter_library() -> None:
    """``import an8flower.baselines`` (and its adapters package) imports none of the libraries."""
    import subprocess

    code = ("import sys, an8flower.baselines, an8flower.baselines.adapters; "
            "from an8flower.baselines import list_explainers; list_explainers(); "
            "print(sorted(m for m in ('captum', 'zennit', 'pytorch_grad_cam', 'quantus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_occlusion_equals_ours_with_the_same_settings(model, x) -> None:
    ours = build_explainer("occlusion", window=4, stride=2, baseline=0.0, output="logit")(model, x, TARGETS)
    theirs = build_explainer("captum:Occlusion", patch=4, stride=2)(model, x, TARGETS)  # "sum" over 3 equal channels
    torch.testing.assert_close(theirs, 3 * ours, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_board_config_is_a_loadable_toml_fragment(tmp_path, capsys) -> None:
    import tomllib

    from an8flower.cli import main

    assert main(["explainers", "--board"]) == 0
    config = tomllib.loads(capsys.readouterr().out)
    available = set(list_adapter_explainers())
    assert config["explainers"][:2] == ["oracle", "centre"]
    assert [n for n in config["explainers"] if ":" in n] == [n for n in BOARD_ADAPTERS if n in available]
    assert config["explainer_options"] == {k: v for k, v in BOARD_OPTIONS.items() if k in available}
    assert main(["explainers"]) == 0
    listing = capsys.readouterr().out
    assert "captum: captum " in listing and "captum:FeaturePermutation" in listing and "quantus:AUC" in listing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["captum:IntegratedGradients", "captum:FeatureAblation", "captum:LayerGradCam",
                                  "zennit:EpsilonPlusFlat", "zennit:EpsilonGammaBox", "gradcam:GradCAM",
                                  "gradcam:ScoreCAM"])
def test_cpu_and_cuda_agree(name) -> None:
    """The three libraries' adapters, every one of them on the device of the model."""
    pytest.importorskip({"captum": "captum", "zennit": "zennit", "gradcam": "pytorch_grad_cam"}[name.split(":")[0]])
    torch.manual_seed(0)
    model = build_model("small-cnn", 5).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 3, 4])
    e = build_explainer(name)
    cpu = e(model, x, t)
    gpu = e(model.cuda(), x.cuda(), t.cuda())
    assert gpu.device.type == "cuda"
    scale = cpu.abs().max().clamp(min=1e-12)
    assert torch.allclose(cpu / scale, gpu.cpu() / scale, atol=1e-3), name
