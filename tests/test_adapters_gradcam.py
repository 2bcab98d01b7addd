"""``gradcam:<Class>`` adapters: equal to a direct pytorch-grad-cam call, batching, hygiene."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest
import torch
from test_explainers import Bomb, Scale, assert_no_hooks
from torch import nn

from an8flower.baselines import build_explainer, explainer_class
from an8flower.baselines.adapters import list_adapter_explainers
from an8flower.errors import UsageError
from an8flower.eval.models import build_model

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

B, S = 3, 16
TARGETS = [1, 3, 0]
CAMS = ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "EigenGradCAM", "LayerCAM", "ScoreCAM",
        "AblationCAM", "FullGrad"]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", 4).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))


def direct(name: str, model: nn.Module, x: torch.Tensor, layer: nn.Module, **kwargs) -> torch.Tensor:
    """pytorch-grad-cam's own call, as its README writes it."""
    layers = [] if name == "FullGrad" else [layer]
    with getattr(pgc, name)(model=model, target_layers=layers, **kwargs) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS]))


@pytest.mark.parametrize("name", CAMS)
def test_adapter_equals_a_direct_call(model, x, name) -> None:
    ours = build_explainer(f"gradcam:{name}")(model, x, torch.tensor(TARGETS))  # layer="auto": features.relu4
    theirs = direct(name, model, x, model.features.relu4)
    assert ours.shape == (B, S, S) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_options_pass_through(model, x) -> None:
    ours = build_explainer("gradcam:AblationCAM", layer="features.relu3", batch_size=7,
                           ratio_channels_to_ablate=0.5)(model, x, torch.tensor(TARGETS))
    theirs = direct("AblationCAM", model, x, model.features.relu3, batch_size=7, ratio_channels_to_ablate=0.5)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    smooth = build_explainer("gradcam:GradCAM", eigen_smooth=True)(model, x, torch.tensor(TARGETS))
    with pgc.GradCAM(model, [model.features.relu4]) as cam:
        expected = cam(x, [ClassifierOutputTarget(t) for t in TARGETS], eigen_smooth=True)
    torch.testing.assert_close(smooth, torch.from_numpy(expected), rtol=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match="no option 'layer'"):
        build_explainer("gradcam:FullGrad", layer="features.relu4")
    with pytest.raises(UsageError, match="DeepFeatureFactorization is not offered"):
        explainer_class("gradcam:DeepFeatureFactorization")


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "EigenCAM", "ScoreCAM", "AblationCAM", "FullGrad"])
def test_batch_equals_per_image(model, x, name) -> None:
    e = build_explainer(f"gradcam:{name}")
    t = torch.tensor(TARGETS)
    batch = e(model, x, t)
    single = torch.cat([e(model, x[i : i + 1], t[i : i + 1]) for i in range(B)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, after", [("GradCAM", 2), ("ScoreCAM", 3), ("AblationCAM", 3), ("AblationCAM", 4),
                                         ("FullGrad", 2)])
def test_no_hooks_layers_or_gradients_left_after_exception(name, after) -> None:
    """The bomb goes off in the library's forward passes: during the hooked pass (GradCAM, FullGrad),
    among ScoreCAM's masked passes, in AblationCAM's own hooked pass (whose hook it removes only on success) and
    inside its loop while its ablation layer replaces ours."""
    torch.manual_seed(0)
    inner = build_model("small-cnn", 3)
    model = nn.Sequential(OrderedDict(inner=inner, bomb=Bomb(after=after))).train()
    model.inner.classifier.weight.requires_grad_(False)
    children = {n: dict(m._modules) for n, m in model.named_modules()}
    opts = {} if name == "FullGrad" else {"layer": "inner.features.relu4"}
    with pytest.raises(RuntimeError, match="bomb"):
        build_explainer(f"gradcam:{name}", **opts)(model, torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    assert_no_hooks(model)
    assert {n: dict(m._modules) for n, m in model.named_modules()} == children
    assert model.training and all(m.training for m in model.modules())
    assert not model.inner.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "inner.classifier.weight")
    assert all(p.grad is None for p in model.parameters())


def test_every_offered_method_runs_and_leaves_no_gradients(model, x) -> None:
    for p in model.parameters():
        p.grad = None
    for name in (n for n in list_adapter_explainers() if n.startswith("gradcam:")):
        out = build_explainer(name)(model, x[:2], torch.tensor(TARGETS[:2]))
        assert out.shape == (2, S, S) and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1, name
        assert_no_hooks(model)
        assert all(p.grad is None for p in model.parameters()), name


def test_random_cam_is_seeded(model, x) -> None:
    t = torch.tensor(TARGETS)
    a = build_explainer("gradcam:RandomCAM", seed=1)(model, x, t)
    assert torch.equal(a, build_explainer("gradcam:RandomCAM", seed=1)(model, x, t))
    assert not torch.equal(a, build_explainer("gradcam:RandomCAM", seed=2)(model, x, t))


def test_missing_library_is_a_usage_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(UsageError, match=r'grad-cam library.*pip install "an8flower\[gradcam\]"'):
        build_explainer("gradcam:GradCAM")
    assert not any(n.startswith("gradcam:") for n in list_adapter_explainers())


def minmax(h: torch.Tensor) -> torch.Tensor:
    lo, hi = h.flatten(1).amin(1).view(-1, 1, 1), h.flatten(1).amax(1).view(-1, 1, 1)
    return (h - lo) / (hi - lo)


def test_ours_and_theirs_agree_after_min_max_scaling() -> None:
    """Grad-CAM and Grad-CAM++, ours and pytorch-grad-cam's, on a layer at input resolution (no resize)."""
    torch.manual_seed(0)
    net = build_model("small-cnn", 4).eval()
    model = nn.Sequential(OrderedDict(net=net, scale=Scale(1e3)))  # large logits: their 1e-7 eps negligible
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([2, 0, 3])
    for ours, theirs in (("gradcam", "gradcam:GradCAM"), ("gradcam_pp", "gradcam:GradCAMPlusPlus")):
        a = build_explainer(ours, layer="net.features.relu1")(model, x, t)
        b = build_explainer(theirs, layer="net.features.relu1")(model, x, t)
        torch.testing.assert_close(minmax(a), b, atol=1e-3, rtol=0)
