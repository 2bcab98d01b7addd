"""``zennit:<Name>`` adapters: LRP through Zennit, relevance conservation on our models, hygiene."""

from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_explainers import Bomb, assert_no_hooks
from torch import nn

from an8flower.baselines import build_explainer, explainer_class, reduce_channels
from an8flower.baselines.adapters import list_adapter_explainers
from an8flower.errors import UsageError
from an8flower.eval.models import build_model

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    ExcitationBackprop,
    GuidedBackprop,
    MixedComposite,
    NameMapComposite,
)
from zennit.rules import Pass  # noqa: E402

B, S = 3, 16
TARGETS = torch.tensor([1, 3, 0])


def busy_batch_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def busy_biases(model: nn.Module, seed: int = 2) -> nn.Module:
    """Small non-zero biases on every convolution and linear layer that has one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.01 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return busy_batch_norms(build_model("small-cnn", 4))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1))


def lrp_out(targets: torch.Tensor, logit: bool = True):
    return lambda out: F.one_hot(targets, out.shape[1]).to(out) * (out if logit else 1)


def zennit_call(model, x, composite, attributor=Gradient, attr_output=None, seed=0, **kwargs) -> torch.Tensor:
    """Zennit's own call, as its documentation writes it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with attributor(model, composite, **kwargs) as attr:
            _, relevance = attr(x.clone().requires_grad_(True), attr_output or lrp_out(TARGETS))
    return relevance.detach()


def ours_for(composite):
    """What the adapter builds for our small CNN: BN merged, Pass on the normalisation."""
    return MixedComposite([NameMapComposite([(("features.normalize",), Pass())]), composite])


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * float(theirs.abs().max().clamp(min=1e-12)))


def test_plain_composite_equals_zennit_call(model, x) -> None:
    """With no canonizer and no Pass rule the adapter is exactly ``with Gradient(model, composite)``."""
    ours = build_explainer("zennit:EpsilonPlusFlat", canonizer="none", pass_preprocessing=False)(model, x, TARGETS)
    close(ours, reduce_channels(zennit_call(model, x, EpsilonPlusFlat()), "sum"))


@pytest.mark.parametrize(
    "name, make, reduction",
    [("EpsilonPlusFlat", lambda c: EpsilonPlusFlat(canonizers=c), "sum"),
     ("EpsilonAlpha2Beta1Flat", lambda c: EpsilonAlpha2Beta1Flat(canonizers=c), "sum"),
     ("ExcitationBackprop", lambda c: ExcitationBackprop(canonizers=c), "sum"),
     ("GuidedBackprop", lambda c: GuidedBackprop(canonizers=c), "abs_max"),
     # small CNN: Normalize(mean 0.5, std 0.25), so pixels in [0, 1] reach conv1 in [-2, 2]
     ("EpsilonGammaBox", lambda c: EpsilonGammaBox(low=torch.full((1, 3, S, S), -2.0),
                                                   high=torch.full((1, 3, S, S), 2.0), canonizers=c), "sum")],
)
def test_composite_equals_zennit_call_with_our_canonizers(model, x, name, make, reduction) -> None:
    ours = build_explainer(f"zennit:{name}")(model, x, TARGETS)
    composite = make([SequentialMergeBatchNorm()])
    # LRP composites: relevance passes the normalisation unchanged; gradient ones: its gradient
    theirs = zennit_call(model, x, ours_for(composite) if reduction == "sum" else composite)
    close(ours, reduce_channels(theirs, reduction))


def test_attributors_equal_zennit_calls(model, x) -> None:
    sg = build_explainer("zennit:SmoothGrad", n_iter=4, noise_level=0.2, seed=5)(model, x, TARGETS)
    close(sg, reduce_channels(zennit_call(model, x, None, SmoothGrad, lrp_out(TARGETS, False), seed=5, n_iter=4,
                                          noise_level=0.2), "abs_max"))
    ig = build_explainer("zennit:IntegratedGradients", n_iter=6)(model, x, TARGETS)
    close(ig, reduce_channels(zennit_call(model, x, None, IntegratedGradients, lrp_out(TARGETS, False), n_iter=6),
                              "abs_sum"))
    lrp_sg = build_explainer("zennit:SmoothGrad", composite="EpsilonPlusFlat", n_iter=3)(model, x, TARGETS)
    theirs = zennit_call(model, x, ours_for(EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])), SmoothGrad,
                         lrp_out(TARGETS, False), n_iter=3)
    close(lrp_sg, reduce_channels(theirs, "abs_max"))


def total_relevance(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, **opts) -> torch.Tensor:
    return build_explainer("zennit:EpsilonPlusFlat", reduction="sum", **opts)(model, x, targets).double().sum((1, 2))


def target_logits(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, targets.view(-1, 1)).squeeze(1).double()


CONSERVATION = {"small-cnn": 32, "resnet18": 32, "vgg16": 64}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16" else n
                                  for n in sorted(CONSERVATION)])
def test_epsilon_plus_flat_conserves_relevance(name) -> None:
    """Input relevance sums to the target logit when the rules ignore biases (``zero_params``).

    Tolerance 1e-3 relative: what remains is the epsilon/stabiliser (1e-6 in each denominator) and
    float32 rounding over the layers; measured gaps are about 1e-5 relative. With the biases the
    rules give each bias its share of the relevance, so the sum misses that share: the test only
    checks the gap is larger (its size depends on the weights; the README gives the measured one).
    """
    torch.manual_seed(0)
    model = busy_biases(busy_batch_norms(build_model(name, 5)))
    size = CONSERVATION[name]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    targets = model(x).argmax(1)
    logits = target_logits(model, x, targets)
    kept = total_relevance(model, x, targets, zero_params=["bias"])
    torch.testing.assert_close(kept, logits, rtol=1e-3, atol=1e-6)
    absorbed = total_relevance(model, x, targets)
    assert ((absorbed - logits).abs() > (kept - logits).abs()).all()
    if name == "small-cnn":  # without the Pass rule, the normalisation multiplies relevance by 1 / std = 4
        scaled = total_relevance(model, x, targets, zero_params=["bias"], pass_preprocessing=False)
        torch.testing.assert_close(scaled, 4 * logits, rtol=1e-3, atol=1e-6)


def test_resnet_canonizer_restores_our_split_blocks() -> None:
    torch.manual_seed(0)
    model = busy_batch_norms(build_model("resnet18", 5))
    x = torch.rand(2, 3, 32, 32)
    block = model.net.layer2[0]
    forward = block.__dict__["forward"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    out = build_explainer("zennit:EpsilonPlusFlat")(model, x, torch.tensor([0, 3]))
    assert out.shape == (2, 32, 32) and torch.isfinite(out).all()
    assert block.__dict__["forward"] is forward and not hasattr(block, "canonizer_sum")
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(model(x), before)
    assert_no_hooks(model)


def test_stock_torchvision_resnet_uses_zennits_canonizer() -> None:
    import torchvision

    torch.manual_seed(0)
    net = busy_batch_norms(torchvision.models.resnet18(weights=None, num_classes=3))
    for m in net.modules():  # zennit's hooks need out-of-place ReLUs; the modules stay shared
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.rand(2, 3, 32, 32)
    targets = net(x).argmax(1)
    kept = build_explainer("zennit:EpsilonPlusFlat", reduction="sum", zero_params=["bias"])(net, x, targets)
    torch.testing.assert_close(kept.double().sum((1, 2)), target_logits(net, x, targets), rtol=1e-3, atol=1e-6)
    assert "forward" not in net.layer1[0].__dict__
    assert_no_hooks(net)


def test_batch_equals_per_image(model, x) -> None:
    for name in ("EpsilonPlusFlat", "EpsilonGammaBox", "ExcitationBackprop", "IntegratedGradients"):
        e = build_explainer(f"zennit:{name}")
        batch = e(model, x, TARGETS)
        single = torch.cat([e(model, x[i : i + 1], TARGETS[i : i + 1]) for i in range(B)])
        torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5 * float(single.abs().max()), msg=name)


@pytest.mark.parametrize("name", ["EpsilonPlusFlat", "EpsilonGammaBox", "SmoothGrad"])
def test_no_hooks_and_state_restored_after_exception(name) -> None:
    torch.manual_seed(0)
    inner = build_model("small-cnn", 3)
    model = nn.Sequential(OrderedDict(inner=inner, bomb=Bomb(after=2))).train()
    model.inner.classifier.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    after = 3 if name == "EpsilonGammaBox" else 2  # its bounds take one forward pass first
    model.bomb.after = after
    with pytest.raises(RuntimeError, match="bomb"):
        build_explainer(f"zennit:{name}")(model, torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    assert_no_hooks(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # batch norms un-merged
    assert model.inner.features.conv1.bias is None  # the merge's bias removed again
    assert model.training and not model.inner.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "inner.classifier.weight")
    assert all(p.grad is None for p in model.parameters())


def test_every_offered_method_runs(model, x) -> None:
    names = [n for n in list_adapter_explainers() if n.startswith("zennit:")]
    assert {"zennit:EpsilonPlusFlat", "zennit:EpsilonGammaBox", "zennit:EpsilonAlpha2Beta1Flat",
            "zennit:GuidedBackprop", "zennit:ExcitationBackprop", "zennit:SmoothGrad",
            "zennit:IntegratedGradients"} <= set(names)
    for name in names:
        out = build_explainer(name)(model, x[:1], TARGETS[:1])
        assert out.shape == (1, S, S) and torch.isfinite(out).all() and out.abs().sum() > 0, name
        assert_no_hooks(model)


def test_options_and_errors(model, x) -> None:
    with pytest.raises(UsageError, match="composite='Nope' is not one of"):
        build_explainer("zennit:SmoothGrad", composite="Nope")
    with pytest.raises(UsageError, match="Occlusion is not offered: returns the occluded"):
        explainer_class("zennit:Occlusion")
    with pytest.raises(UsageError, match="no option 'output'"):
        build_explainer("zennit:IntegratedGradients", output="logit")
    with pytest.raises(UsageError, match="low=1.0 must be below high=0.0"):
        build_explainer("zennit:EpsilonGammaBox", low=1.0, high=0.0)(model, x, TARGETS)
    one_hot = build_explainer("zennit:EpsilonPlusFlat", output="one_hot")(model, x, TARGETS)
    logit = build_explainer("zennit:EpsilonPlusFlat")(model, x, TARGETS)
    expected = one_hot * target_logits(model, x, TARGETS).float().view(-1, 1, 1)  # the rules are linear in R
    torch.testing.assert_close(logit, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_missing_zennit_is_a_usage_error_naming_the_extra(monkeypatch, capsys, tmp_path) -> None:
    from an8flower.cli import main

    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(UsageError, match=r'pip install "an8flower\[zennit\]"'):
        build_explainer("zennit:EpsilonPlusFlat")
    assert not any(n.startswith("zennit:") for n in list_adapter_explainers())
    assert main(["explainers"]) == 0
    listing = capsys.readouterr().out
    assert 'unavailable: zennit:' in listing and 'pip install "an8flower[zennit]"' in listing
    assert "zennit:EpsilonPlusFlat" not in listing and "captum:Saliency" in listing
    out = tmp_path / "r"
    assert main(["leaderboard", "--out", str(out), "--explainer", "zennit:EpsilonPlusFlat", "--quiet"]) == 2
    assert 'an8flower[zennit]' in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("ours, theirs", [("guided_backprop", "zennit:GuidedBackprop"),
                                          ("deconvnet", "zennit:DeconvNet"), ("gradient", "zennit:Gradient")])
def test_duplicates_agree_with_ours(model, x, ours, theirs) -> None:
    a = build_explainer(ours, reduction="sum")(model, x, TARGETS)
    b = build_explainer(theirs, reduction="sum", output="one_hot")(model, x, TARGETS)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))  # BN merged: float32 rounding


def test_integrated_gradients_and_smoothgrad_are_close_not_equal(model, x) -> None:
    ours = build_explainer("integrated_gradients", steps=32)(model, x, TARGETS)
    theirs = build_explainer("zennit:IntegratedGradients", n_iter=32)(model, x, TARGETS)
    r = np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1]
    assert r > 0.95 and not torch.allclose(ours, theirs, rtol=1e-3)


def test_smoothgrad_is_the_gradient_at_zero_noise(model, x) -> None:
    grad = build_explainer("gradient")(model, x, TARGETS)
    ours = build_explainer("smoothgrad", noise=0.0, n_samples=3)(model, x, TARGETS)
    theirs = build_explainer("zennit:SmoothGrad", noise_level=0.0, n_iter=3)(model, x, TARGETS)
    captum = build_explainer("captum:Saliency", noise_tunnel="smoothgrad", nt_stdevs=0.0, abs=False)(model, x, TARGETS)
    for other in (ours, theirs, captum):
        torch.testing.assert_close(other, grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max()))
    noisy = build_explainer("zennit:SmoothGrad", noise_level=0.15, n_iter=8)(model, x, TARGETS)
    assert not torch.allclose(noisy, build_explainer("smoothgrad", n_samples=8)(model, x, TARGETS), rtol=1e-2)
