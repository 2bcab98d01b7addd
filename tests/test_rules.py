"""Backward rules (an8flower.baselines.rules): hand-computed values, stride fix, hook hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines.rules import backward_rules, modified_gradient, stride_fix_backward
from an8flower.errors import UsageError


def _conv(c_in: int, c_out: int, k: int, weight: list, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, k, bias=False, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32).view_as(conv.weight))
    return conv


def _linear(weight: list) -> nn.Linear:
    lin = nn.Linear(len(weight), 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([weight], dtype=torch.float32))
    return lin


def conv_relu_net() -> nn.Module:
    """x (1x3x3) -> conv 2x2 [[1,-1],[0,2]] -> ReLU -> flatten -> linear [1,-2,3,1] -> one logit."""
    return nn.Sequential(_conv(1, 1, 2, [[1, -1], [0, 2]]), nn.ReLU(), nn.Flatten(), _linear([1, -2, 3, 1]))


X1 = torch.tensor([[[[1.0, 2, 0], [-1, 3, 1], [2, -2, 1]]]])
# Pre-activations z = [[5, 4], [-8, 4]], so R_z (per rule) is:
#   gradient  v * 1[z>0]        = [[1, -2], [0, 1]]
#   guided    max(v,0) * 1[z>0] = [[1, 0], [0, 1]]
#   deconvnet max(v,0)          = [[1, 0], [3, 1]]
# and the input map is the transposed conv: R_x[i+a, j+b] += R_z[i, j] * K[a, b].
EXPECTED_1 = {
    "gradient": [[1, -3, 2], [0, 3, -5], [0, 0, 2]],
    "guided": [[1, -1, 0], [0, 3, -1], [0, 0, 2]],
    "deconvnet": [[1, -1, 0], [3, 0, -1], [0, 6, 2]],
}


def pool_net() -> nn.Module:
    """x (1x4x4) -> conv 1x1 (w=2) -> max-pool 2 -> ReLU -> flatten -> linear [-1, 2, -3, 1]."""
    return nn.Sequential(_conv(1, 1, 1, [2]), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), _linear([-1, 2, -3, 1]))


X2 = torch.tensor([[[[1.0, 3, -2, -1], [2, 0, -4, -3], [-1, -5, 4, 2], [-2, -3, 1, 0]]]])
# Switches: (0,1), (0,3), (2,0), (2,2); pooled p = [6, -2, -2, 8]; R at the input = 2 * R_p at the switch.
EXPECTED_2 = {
    "gradient": {(0, 1): -2.0, (2, 2): 2.0},
    "guided": {(2, 2): 2.0},
    "deconvnet": {(0, 3): 4.0, (2, 2): 2.0},
}


@pytest.mark.parametrize("rule", ["gradient", "guided", "deconvnet"])
def test_conv_relu_hand_values(rule: str) -> None:
    out = modified_gradient(conv_relu_net(), X1, torch.tensor([0]), relu=rule)
    assert torch.equal(out, torch.tensor(EXPECTED_1[rule], dtype=torch.float32).view(1, 1, 3, 3))


@pytest.mark.parametrize("rule", ["gradient", "guided", "deconvnet"])
def test_maxpool_switch_hand_values(rule: str) -> None:
    out = modified_gradient(pool_net(), X2, torch.tensor([0]), relu=rule)
    expected = torch.zeros(1, 1, 4, 4)
    for (i, j), v in EXPECTED_2[rule].items():
        expected[0, 0, i, j] = v
    assert torch.equal(out, expected)


def test_plain_rule_is_autograd_gradient() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(3, 3, 9, 9)
    net(x)
    xr = x.clone().requires_grad_(True)
    t = torch.tensor([1, 4, 0])
    net(xr).gather(1, t.view(-1, 1)).sum().backward()
    assert torch.allclose(modified_gradient(net, x, t), xr.grad, atol=1e-6)


def test_batched_equals_per_image() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(4, 3, 11, 11)
    net(x)
    t = torch.tensor([0, 3, 2, 1])
    for rule in ("guided", "deconvnet"):
        batch = modified_gradient(net, x, t, relu=rule, stride_fix=True)
        single = torch.cat([modified_gradient(net, x[i : i + 1], t[i : i + 1], relu=rule, stride_fix=True) for i in range(4)])
        assert torch.allclose(batch, single, atol=1e-6)


def test_shared_relu_module_is_hooked_at_each_call() -> None:
    """A ReLU module reused twice (as in plain torchvision ResNets) gets the rule at both uses."""
    torch.manual_seed(2)
    c1, c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3))

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.relu, self.head = c1, c2, nn.ReLU(inplace=True), head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.relu(self.c2(self.relu(self.c1(x)))))

    distinct = nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), head)
    x, t = torch.randn(2, 2, 6, 6), torch.tensor([0, 2])
    shared = Shared()
    for rule in ("guided", "deconvnet"):
        assert torch.allclose(modified_gradient(shared, x, t, relu=rule), modified_gradient(distinct, x, t, relu=rule), atol=1e-6)
    assert shared.relu.inplace is True


def test_intermediate_seed() -> None:
    """Seeding the backward at an inner ReLU's output: guided rule there, then the transposed conv."""
    torch.manual_seed(3)
    conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    relu1 = nn.ReLU()
    net = nn.Sequential(conv1, relu1, nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 1, 5, 5)
    net(x)
    seed = torch.randn(2, 2, 5, 5)
    acts: list[torch.Tensor] = []
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad(), backward_rules(net, relu="guided") as scope:
        scope.add(relu1.register_forward_hook(lambda m, i, o: acts.append(o)))
        net(xr)
        (grad,) = torch.autograd.grad(acts[0], xr, seed)
    z = conv1(x)
    expected = F.conv_transpose2d(seed.clamp(min=0) * (z > 0), conv1.weight, padding=1)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert not relu1._forward_hooks


def test_hooks_removed_and_inplace_restored_after_exception() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(inplace=True), nn.Flatten())
    with pytest.raises(RuntimeError, match="boom"):
        with backward_rules(net, relu="deconvnet", stride_fix=True) as scope:
            assert len(list(scope)) == 6  # the guard's model pre/post hooks, the ReLU's rule hook and guard pre/post hooks, the conv's stride fix
            assert net[1].inplace is False
            raise RuntimeError("boom")
    for m in net.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    assert net[1].inplace is True


def test_no_parameter_grads() -> None:
    net = conv_relu_net()
    modified_gradient(net, X1, torch.tensor([0]), relu="guided")
    assert all(p.grad is None for p in net.parameters())


def test_bad_rule_and_no_relu_module() -> None:
    with pytest.raises(UsageError, match="relu"):
        with backward_rules(conv_relu_net(), relu="lrp"):
            pass

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(x)).flatten(1)

    with pytest.raises(UsageError, match="nn.ReLU"):
        modified_gradient(Functional(), torch.randn(1, 1, 2, 2), torch.tensor([0]), relu="guided")


def test_stride_fix_hand_values() -> None:
    """4x4 input, 3x3 all-ones kernel, stride 2, padding 1, signal of ones at the 2x2 output."""
    conv = _conv(1, 1, 3, [1.0] * 9, stride=2, padding=1)
    x = torch.zeros(1, 1, 4, 4)
    with torch.enable_grad():
        xr = x.requires_grad_(True)
        plain = torch.autograd.grad(conv(xr).sum(), xr)[0]
        with backward_rules(conv, stride_fix=True):
            fixed = torch.autograd.grad(conv(xr).sum(), xr)[0]
    rows = torch.tensor([1.0, 2, 1, 1])
    assert torch.equal(plain[0, 0], torch.outer(rows, rows))  # the uneven, checkerboard-prone spread
    expected = torch.tensor([[4.0, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    assert torch.equal(fixed[0, 0], expected)


@pytest.mark.parametrize(
    "h,w,k,s,p,d,mode",
    [
        (7, 7, 3, 2, 0, 1, "zeros"),
        (8, 8, 3, 2, 1, 1, "zeros"),
        (9, 10, 7, 2, 3, 1, "zeros"),  # ResNet stem on odd/even sizes
        (10, 9, 1, 2, 0, 1, "zeros"),  # ResNet 1x1 downsample
        (11, 11, 4, 3, 2, 1, "zeros"),
        (12, 13, 3, 2, 2, 2, "zeros"),
        (9, 8, 3, 2, 1, 1, "reflect"),
        (8, 9, 5, 3, 2, 1, "replicate"),
    ],
)
def test_stride_fix_matches_stride1_reference(h: int, w: int, k: int, s: int, p: int, d: int, mode: str) -> None:
    """Fixed backward == autograd through the stride-1 conv of the nearest-upsampled, cropped signal."""
    torch.manual_seed(h * 31 + k)
    conv = nn.Conv2d(2, 3, k, stride=s, padding=p, dilation=d, padding_mode=mode)
    x = torch.randn(2, 2, h, w)
    g = torch.randn_like(conv(x))
    out = stride_fix_backward(g, conv, (h, w))
    assert out.shape == x.shape
    conv1 = nn.Conv2d(2, 3, k, stride=1, padding=p, dilation=d, padding_mode=mode)
    conv1.load_state_dict(conv.state_dict())
    xr = x.clone().requires_grad_(True)
    y1 = conv1(xr)
    up = g.repeat_interleave(s, 2).repeat_interleave(s, 3)
    assert up.shape[2] >= y1.shape[2] and up.shape[3] >= y1.shape[3]
    (ref,) = torch.autograd.grad(y1, xr, up[:, :, : y1.shape[2], : y1.shape[3]])
    assert torch.allclose(out, ref, atol=1e-5)
    # and through the hook, at an inner position of a network
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), conv)
    with torch.enable_grad(), backward_rules(net, stride_fix=True):
        xr = x.clone().requires_grad_(True)
        a = net[0](xr)
        (via_hook,) = torch.autograd.grad(net[1](a), a, g)
    assert torch.allclose(via_hook, out, atol=1e-5)


def test_stride_fix_leaves_stride1_conv_alone() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 3, 8, 8)
    net(x)
    t = torch.tensor([0, 2])
    for rule in ("gradient", "guided"):
        assert torch.equal(modified_gradient(net, x, t, relu=rule, stride_fix=True), modified_gradient(net, x, t, relu=rule))


class _HalfFunctional(nn.Module):
    """Defines an nn.ReLU module but also rectifies functionally (as torchvision's DenseNet does)."""

    def __init__(self, functional: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        y = {"F.relu": torch.nn.functional.relu, "Tensor.relu": torch.Tensor.relu,
             "clamp(min=0)": lambda t: t.clamp(min=0), "relu6": torch.nn.functional.relu6}[self.functional](y - 0.1)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("functional", ["F.relu", "Tensor.relu", "clamp(min=0)", "relu6"])
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_functional_rectification_next_to_relu_modules_is_refused(functional: str, rule: str) -> None:
    net = _HalfFunctional(functional)
    with pytest.raises(UsageError, match=f"relu={rule!r}: _HalfFunctional rectifies outside its nn.ReLU modules"):
        modified_gradient(net, X1, torch.tensor([0]), relu=rule)
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # the plain gradient has no rule to miss, and is computed as before
    g = modified_gradient(net, X1, torch.tensor([0]), relu="gradient")
    assert g.shape == X1.shape and torch.isfinite(g).all()


def test_rectifications_inside_relu_modules_and_other_clamps_pass() -> None:
    class Clamps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.conv(x)).clamp(min=-1.0).clamp(0.0, 1.0)  # not rectifications: lower bound != 0, or a max
            return y.flatten(1)[:, :3]

    g = modified_gradient(Clamps(), X1, torch.tensor([1]), relu="guided")
    assert g.shape == X1.shape
