"""The explainer protocol: registry, input checks, channel reductions, hook scope."""

import pytest
import torch
from torch import nn

from an8flower.baselines.base import (
    CHANNEL_REDUCTIONS,
    Explainer,
    HookScope,
    check_inputs,
    reduce_channels,
)
from an8flower.baselines.registry import (
    _REGISTRY,
    build_explainer,
    explainer_class,
    list_explainers,
    register_explainer,
)
from an8flower.errors import UsageError


class TinyNet(nn.Module):
    """logits = W @ mean over pixels of the image, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class IdentitySum(Explainer):
    """Heatmap = the image summed over channels (signed)."""

    reduction = "sum"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def explain(self, model, images, targets):
        return images * self.scale

    def options(self):
        return {"scale": self.scale}


@pytest.fixture(autouse=True)
def registered():
    """Register the test explainer for one test only, so other tests never see it."""
    register_explainer("_test_identity_sum")(IdentitySum)
    yield
    _REGISTRY.pop("_test_identity_sum", None)


def test_registry_builds_by_name_with_options():
    assert "_test_identity_sum" in list_explainers()
    e = build_explainer("_test_identity_sum", scale=2.0)
    assert isinstance(e, IdentitySum) and e.name == "_test_identity_sum"
    x = torch.ones(2, 2, 3, 4)
    out = e(TinyNet(), x, torch.tensor([0, 1]))
    assert out.shape == (2, 3, 4) and out.dtype == torch.float32
    assert torch.equal(out, torch.full((2, 3, 4), 4.0))  # 2 channels * 1 * scale 2
    assert repr(e) == "IdentitySum(scale=2.0)"


def test_registry_errors_name_the_problem():
    with pytest.raises(UsageError, match="no_such_explainer"):
        explainer_class("no_such_explainer")
    with pytest.raises(UsageError, match="'bogus'"):
        build_explainer("_test_identity_sum", bogus=1)
    with pytest.raises(UsageError, match="already registered"):
        register_explainer("_test_identity_sum")(type("Other", (Explainer,), {}))
    with pytest.raises(UsageError, match="Explainer subclasses"):
        register_explainer("_not_an_explainer")(int)


def test_check_inputs_resolves_predicted_targets():
    model = TinyNet()
    x = torch.zeros(3, 2, 2, 2)
    x[0, 0] = 1.0  # class 0 wins
    x[1, 1] = 1.0  # class 1 wins
    x[2] = -1.0  # class 2 wins: logits (-1, -1, 2)
    _, targets = check_inputs(model, x, None)
    assert targets.tolist() == [0, 1, 2]
    _, targets = check_inputs(model, x, 1)
    assert targets.tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "images, targets, match",
    [
        (torch.zeros(2, 2, 2), None, r"\(B, C, H, W\)"),
        (torch.zeros(2, 2, 2, 2, dtype=torch.uint8), None, "floating-point"),
        (torch.zeros(0, 2, 2, 2), None, "empty batch"),
        (torch.zeros(2, 2, 2, 2), torch.tensor([0, 3]), r"targets\[1\] = 3 is out of range"),
        (torch.zeros(2, 2, 2, 2), torch.tensor([-1, 0]), r"targets\[0\] = -1"),
        (torch.zeros(2, 2, 2, 2), torch.tensor([0, 1, 2]), r"targets must have shape \(2,\)"),
        (torch.zeros(2, 2, 2, 2), torch.tensor([0.0, 1.0]), "integer class indices"),
    ],
)
def test_check_inputs_rejects_bad_input(images, targets, match):
    with pytest.raises(UsageError, match=match):
        check_inputs(TinyNet(), images, targets)


def test_call_restores_mode_and_flags_even_on_error():
    class Boom(Explainer):
        def explain(self, model, images, targets):
            model.fc.weight.requires_grad_(False)
            raise RuntimeError("boom")

    model = TinyNet().train()
    with pytest.raises(RuntimeError, match="boom"):
        Boom()(model, torch.zeros(1, 2, 2, 2), torch.tensor([0]))
    assert model.training
    assert model.fc.weight.requires_grad


def test_wrong_output_shape_is_reported():
    class Bad(Explainer):
        def explain(self, model, images, targets):
            return torch.zeros(images.shape[0], 5, 5)

    with pytest.raises(RuntimeError, match=r"expected \(1, 2, 2\)"):
        Bad()(TinyNet(), torch.zeros(1, 2, 2, 2), torch.tensor([0]))


def test_channel_reductions_hand_computed():
    a = torch.tensor([3.0, -4.0]).view(1, 2, 1, 1)
    expected = {"abs_max": 4.0, "abs_sum": 7.0, "l2": 5.0, "sum": -1.0, "pos_l2": 3.0}
    assert set(expected) == set(CHANNEL_REDUCTIONS)
    for rule, value in expected.items():
        assert reduce_channels(a, rule).item() == pytest.approx(value)
    with pytest.raises(UsageError, match="unknown channel reduction 'max'"):
        reduce_channels(a, "max")


def test_hook_scope_removes_hooks_on_error():
    layer = nn.Linear(2, 2)
    with pytest.raises(ValueError):
        with HookScope() as hooks:
            hooks.add(layer.register_forward_hook(lambda m, i, o: None))
            hooks.add(layer.register_full_backward_hook(lambda m, gi, go: None))
            assert len(layer._forward_hooks) == 1
            raise ValueError("inside")
    assert len(layer._forward_hooks) == 0 and len(layer._backward_hooks) == 0


class TupleNet(TinyNet):
    """Returns (logits, features), or a dict {"logits", "features"}, as many research models do."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        feats = x.mean(dim=(2, 3))
        logits = self.fc(feats)
        return {"logits": logits, "features": feats} if self.as_dict else (logits, feats)


@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("targets", [None, torch.tensor([0, 2])])
def test_model_returning_tuple_or_dict_is_a_clear_error_and_select_output_fixes_it(as_dict: bool, targets) -> None:
    from an8flower.baselines import SelectOutput

    x = torch.rand(2, 2, 4, 4)
    net = TupleNet(as_dict)
    with pytest.raises(UsageError, match=rf"logits tensor \(B, K\), got a {'dict' if as_dict else 'tuple'}.*SelectOutput"):
        build_explainer("gradient")(net, x, targets)
    wrapped = SelectOutput(net, "logits" if as_dict else 0)
    h = build_explainer("gradient")(wrapped, x, targets)
    expected = build_explainer("gradient")(TinyNet(), x, targets)
    assert torch.equal(h, expected)
    with pytest.raises(UsageError, match="has no entry 'scores'"):
        SelectOutput(net, "scores")(x)


def test_target_check_costs_one_forward_per_model_and_shape() -> None:
    calls = []
    net = TinyNet()
    net.register_forward_pre_hook(lambda m, inp: calls.append(tuple(inp[0].shape)))
    x = torch.rand(4, 2, 3, 3)
    for _ in range(3):
        check_inputs(net, x, torch.tensor([0, 1, 2, 0]))
    assert calls == [(1, 2, 3, 3)]  # checked once, then the class count is cached
    check_inputs(net, torch.rand(2, 2, 5, 5), torch.tensor([0, 1]))
    assert calls[-1] == (1, 2, 5, 5)  # a new image size is checked again
    with pytest.raises(UsageError, match=r"targets\[1\] = 3 is out of range for a model with 3 classes"):
        check_inputs(net, x[:2], torch.tensor([0, 3]))
    net.fc = nn.Linear(2, 5, bias=False)  # another number of classes: seen through the parameter shapes
    check_inputs(net, x[:2], torch.tensor([0, 4]))
