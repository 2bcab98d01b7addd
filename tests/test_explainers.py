"""Baseline explainers: hand-computed maps, formulas, batching, hook hygiene, shapes on the model zoo."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines import build_explainer, list_explainers
from an8flower.baselines.cam import default_cam_layer, gradcam_plus_plus_map
from an8flower.baselines.perturbation import RISE, rise_masks
from an8flower.baselines.reference import centre_gaussian
from an8flower.errors import UsageError
from an8flower.eval.models import DEFAULT_CAM_LAYER, build_model

BASELINES = [
    "centre",
    "deconvnet",
    "gradcam",
    "gradcam_pp",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "random",
    "rise",
    "smoothgrad",
    "upsampled_activation",
]

#: Cheap options for the shape/batching tests (32 px images).
CHEAP = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"n_samples": 3},
    "occlusion": {"window": 16, "stride": 16},
    "rise": {"n_masks": 12, "grid": 4},
}


def cheap(name: str, **extra) -> object:
    return build_explainer(name, **{**CHEAP.get(name, {}), **extra})


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        assert not m._forward_hooks, name
        assert not m._forward_pre_hooks, name
        assert not m._backward_hooks, name
        assert not getattr(m, "_backward_pre_hooks", {}), name


# --- hand-computed maps ------------------------------------------------------------------------


def hand_net() -> nn.Module:
    """x (2x2x2) -> conv 1x1 with weights (1, -1) -> ReLU -> flatten -> linear to 2 classes."""
    conv = nn.Conv2d(2, 1, 1, bias=False)
    fc = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 1.0, 3.0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc)


# z = x0 - x1 = [[-1, 1], [3, -1]]; target 1 has weights v = [2, -1, 1, 3] on z's pixels.
HAND_X = torch.tensor([[[[1.0, 2], [3, 0]], [[2.0, 1], [0, 1]]]])
# R_z: gradient v * 1[z>0] = [0, -1, 1, 0]; guided max(v,0) * 1[z>0] = [0, 0, 1, 0]; deconvnet max(v,0).
# R_x = (R_z, -R_z) over the two channels, so abs_max over channels = |R_z|.
HAND_EXPECTED = {
    ("gradient", "abs_max"): [[0, 1], [1, 0]],
    ("guided_backprop", "abs_max"): [[0, 0], [1, 0]],
    ("deconvnet", "abs_max"): [[2, 0], [1, 3]],
    ("gradient", "sum"): [[0, 0], [0, 0]],
    # x * grad summed over channels = R_z * z; summed absolute values = |R_z| (|x0| + |x1|)
    ("input_x_gradient", "sum"): [[0, -1], [3, 0]],
    ("input_x_gradient", "abs_sum"): [[0, 3], [3, 0]],
    # On this net the ReLU pattern is constant on the path a*x (a > 0), so IG = x * grad exactly.
    ("integrated_gradients", "sum"): [[0, -1], [3, 0]],
    # noise 0: SmoothGrad is the gradient.
    ("smoothgrad", "abs_max"): [[0, 1], [1, 0]],
}


@pytest.mark.parametrize("name,reduction", sorted(HAND_EXPECTED))
def test_hand_computed_maps(name: str, reduction: str) -> None:
    opts = {"reduction": reduction}
    if name == "smoothgrad":
        opts.update(noise=0.0, n_samples=2)
    if name == "integrated_gradients":
        opts.update(steps=5)
    out = build_explainer(name, **opts)(hand_net(), HAND_X, torch.tensor([1]))
    assert torch.allclose(out[0], torch.tensor(HAND_EXPECTED[(name, reduction)], dtype=torch.float32), atol=1e-5)


def test_explainer_default_reductions() -> None:
    assert build_explainer("gradient").options() == {"reduction": "abs_max"}
    assert build_explainer("guided_backprop").options() == {"reduction": "abs_max", "stride_fix": False}
    assert build_explainer("integrated_gradients").reduction == "abs_sum"


# --- CAM formulas on known feature maps ----------------------------------------------------------


def known_feature_net() -> nn.Module:
    """Average-pool 2 (the layer ``pool``), then a linear head: dS/dA is the head's weights."""
    fc = nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        fc.weight.zero_()
        fc.weight[0] = torch.tensor([2.0, 0, 1, 1, -1, -1, -2, 0])  # channel means 1 and -1
        fc.weight[1] = torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1])
    return nn.Sequential(OrderedDict(pool=nn.AvgPool2d(2), flat=nn.Flatten(), fc=fc))


A0 = torch.tensor([[1.0, 2], [0, 4]])
A1 = torch.tensor([[3.0, 0], [1, 1]])
# images whose 2x2 average-pooled maps are A0 and A1
KNOWN_X = torch.stack([A0, A1]).repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(0)


def up(m: torch.Tensor) -> torch.Tensor:
    return F.interpolate(m.view(1, 1, 2, 2), size=(4, 4), mode="bilinear", align_corners=False)[0]


def test_gradcam_equals_formula() -> None:
    # alpha = channel means of dS/dA = (1, -1); relu(A0 - A1) = [[0, 2], [0, 3]]
    out = build_explainer("gradcam", layer="pool")(known_feature_net(), KNOWN_X, torch.tensor([0]))
    assert torch.allclose(out, up(torch.tensor([[0.0, 2], [0, 3]])), atol=1e-6)


def test_gradcam_pp_equals_formula() -> None:
    # channel 0: G = [[2,0],[1,1]], sum A0 = 7: alpha = 1/(2 + 7 G) = [[1/16, 0], [1/9, 1/9]],
    # w0 = 2/16 + 1/9 + 1/9 = 25/72; channel 1: relu(G) = 0, w1 = 0.
    expected = 25 / 72 * A0
    act = torch.stack([A0, A1]).unsqueeze(0)
    grad = known_feature_net().fc.weight[0].detach().view(1, 2, 2, 2)
    assert torch.allclose(gradcam_plus_plus_map(act, grad)[0], expected, atol=1e-6)
    out = build_explainer("gradcam_pp", layer="pool")(known_feature_net(), KNOWN_X, torch.tensor([0]))
    assert torch.allclose(out, up(expected), atol=1e-6)


def test_upsampled_activation_selects_unit() -> None:
    net = known_feature_net()
    # target 0: contributions sum(A*G) = (6, -5) -> unit 0; target 1: (-7, 5) -> unit 1
    e = build_explainer("upsampled_activation", layer="pool")
    out = e(net, KNOWN_X.repeat(2, 1, 1, 1), torch.tensor([0, 1]))
    assert torch.allclose(out[0], up(A0)[0], atol=1e-6) and torch.allclose(out[1], up(A1)[0], atol=1e-6)
    # "activation": the most active unit (mean 7/4 vs 5/4) whatever the class
    out = build_explainer("upsampled_activation", layer="pool", select="activation")(net, KNOWN_X, torch.tensor([1]))
    assert torch.allclose(out[0], up(A0)[0], atol=1e-6)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_gradcam_pp_matches_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    net = build_model("small-cnn", 4).eval()
    # logits scaled up so that their eps (1e-6 in alpha's denominator) is negligible
    model = nn.Sequential(OrderedDict(net=net, scale=Scale(1e3)))
    x = torch.rand(3, 3, 32, 32)
    targets = [2, 0, 3]
    # a layer at input resolution, so that neither side resizes (theirs normalises before resizing)
    ours = build_explainer("gradcam_pp", layer="net.features.relu1")(model, x, torch.tensor(targets))
    with pgc.GradCAMPlusPlus(model, [net.features.relu1]) as cam:
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(t) for t in targets]))
    lo = ours.flatten(1).amin(1).view(-1, 1, 1)
    hi = ours.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose((ours - lo) / (hi - lo), theirs, atol=1e-3)


# --- default layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFAULT_CAM_LAYER))
def test_default_cam_layer_matches_model_zoo(name: str) -> None:
    assert default_cam_layer(build_model(name, 3)) == DEFAULT_CAM_LAYER[name]


def test_default_cam_layer_on_plain_torchvision() -> None:
    import torchvision

    assert default_cam_layer(torchvision.models.vgg11(weights=None, num_classes=2)) == "features.19"
    assert default_cam_layer(torchvision.models.resnet18(weights=None, num_classes=2)) == "layer4"


def test_plain_torchvision_resnet_shared_inplace_relus() -> None:
    """Guided backprop, Grad-CAM++ work on a ResNet whose blocks reuse one in-place ReLU."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    for name in ("guided_backprop", "deconvnet", "gradcam_pp", "gradcam"):
        out = build_explainer(name)(net, x, torch.tensor([0, 2]))
        assert out.shape == (2, 32, 32) and torch.isfinite(out).all()
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    assert_no_hooks(net)


# --- perturbation and reference explainers -------------------------------------------------------


class PixelNet(nn.Module):
    """logit_k = sum(x * V_k): occlusion and RISE scores are linear in the image."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.v)


def test_occlusion_hand_values() -> None:
    v = torch.zeros(2, 1, 4, 4)
    v[1, 0] = torch.arange(16.0).view(4, 4)
    x = torch.ones(1, 1, 4, 4)
    # non-overlapping 2x2 windows with baseline 0: each window's pixels get sum(V over the window)
    out = build_explainer("occlusion", window=2, stride=2, baseline=0.0, output="logit")(PixelNet(v), x, torch.tensor([1]))
    expected = torch.tensor([[10.0, 18], [42, 50]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(out[0], expected)
    # stride 1, window 2 on a 1-D-like ramp: pixel relevance = mean over covering windows
    out = build_explainer("occlusion", window=2, stride=1, baseline=0.0, output="logit")(PixelNet(v), x, torch.tensor([1]))
    win = F.avg_pool2d(v[1:2], 2, stride=1) * 4  # (1,1,3,3) window sums
    count = F.conv_transpose2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))
    assert torch.allclose(out[0], (F.conv_transpose2d(win, torch.ones(1, 1, 2, 2)) / count)[0, 0])


def test_rise_masks_geometry() -> None:
    gen = torch.Generator().manual_seed(0)
    grids = (torch.rand(5, 3, 3, generator=gen) < 0.5).float()
    shifts = torch.tensor([[0, 0], [1, 2], [3, 3], [2, 0], [0, 3]])
    masks = rise_masks(grids, shifts, (10, 11), (4, 4))
    assert masks.shape == (5, 10, 11)
    for i in range(5):
        full = F.interpolate(grids[i].view(1, 1, 3, 3), size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        dy, dx = shifts[i].tolist()
        assert torch.equal(masks[i], full[dy : dy + 10, dx : dx + 11])
    ones = rise_masks(torch.ones(2, 4, 4), torch.tensor([[1, 2], [3, 0]]), (9, 9), (3, 3))
    assert torch.allclose(ones, torch.ones(2, 9, 9))


def test_rise_equals_per_mask_definition() -> None:
    torch.manual_seed(0)
    v = torch.randn(3, 2, 9, 8)
    x = torch.rand(2, 2, 9, 8)
    targets = torch.tensor([2, 0])
    e = RISE(n_masks=13, grid=3, p=0.4, output="logit", batch_size=5)
    out = e(PixelNet(v), x, targets)
    grids, shifts, cell = e.masks_for((9, 8))
    masks = rise_masks(grids, shifts, (9, 8), cell)
    for b in range(2):
        ref = sum(float((x[b] * m * v[targets[b]]).sum()) * m for m in masks) / (13 * 0.4)
        assert torch.allclose(out[b], ref, atol=1e-4)


def test_rise_finds_the_pixel_the_model_reads() -> None:
    v = torch.zeros(2, 1, 16, 16)
    v[0, 0, 4, 11] = 1.0
    out = build_explainer("rise", n_masks=400, grid=4, output="logit")(PixelNet(v), torch.ones(1, 1, 16, 16), torch.tensor([0]))
    peak = divmod(int(out[0].argmax()), 16)
    assert abs(peak[0] - 4) <= 1 and abs(peak[1] - 11) <= 1


def test_centre_and_random() -> None:
    g = centre_gaussian((9, 9), 0.25)
    assert g[4, 4] == 1.0 and int(g.argmax()) == 40
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.t())
    assert g[4, 4 + 2].item() == pytest.approx(torch.exp(torch.tensor(-0.5 * (2 / 2.25) ** 2)).item())
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.rand(3, 2, 6, 5)
    out = build_explainer("centre", sigma=0.25)(net, x, torch.tensor([0, 1, 0]))
    assert torch.equal(out[0], centre_gaussian((6, 5), 0.25)) and torch.equal(out[0], out[2])
    r = build_explainer("random", seed=3)
    a = r(net, x, torch.tensor([0, 1, 0]))
    assert ((a >= 0) & (a < 1)).all() and not torch.equal(a[0], a[1])
    assert torch.equal(r(net, x.flip(0), torch.tensor([0, 1, 0])), a.flip(0))  # position-independent
    assert torch.equal(r(net, x[1:2], torch.tensor([1])), a[1:2])
    assert not torch.equal(build_explainer("random", seed=4)(net, x, torch.tensor([0, 1, 0])), a)


# --- every explainer on the model zoo ------------------------------------------------------------


def test_registry_lists_the_baselines() -> None:
    assert set(BASELINES) <= set(list_explainers())


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, 5).eval() for name in ("small-cnn", "vgg16", "resnet18")}


@pytest.mark.parametrize("model_name", ["small-cnn", "vgg16", "resnet18"])
def test_every_explainer_shape_on_model_zoo(zoo: dict[str, nn.Module], model_name: str) -> None:
    model = zoo[model_name]
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    for name in BASELINES:
        out = cheap(name)(model, x, torch.tensor([4, 0]))
        assert out.shape == (2, 32, 40), name
        assert out.dtype == torch.float32 and not out.requires_grad, name
        assert torch.isfinite(out).all(), name
        assert_no_hooks(model)
        assert all(p.grad is None for p in model.parameters()), name


@pytest.mark.parametrize("name", BASELINES)
def test_batch_equals_per_image(zoo: dict[str, nn.Module], name: str) -> None:
    model = zoo["small-cnn"]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 4, 2])
    e = cheap(name)
    batch = e(model, x, targets)
    single = torch.cat([e(model, x[i : i + 1], targets[i : i + 1]) for i in range(3)])
    scale = batch.abs().max().clamp(min=1e-12)
    assert torch.allclose(batch / scale, single / scale, atol=1e-4), name


def test_targets_none_means_predicted_class(zoo: dict[str, nn.Module]) -> None:
    model = zoo["small-cnn"]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    pred = model(x).argmax(1)
    assert torch.equal(build_explainer("gradient")(model, x), build_explainer("gradient")(model, x, pred))


class Bomb(nn.Module):
    """Identity that raises on its ``after``-th call (the first call is the input check)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("bomb")
        return x


@pytest.mark.parametrize("name", BASELINES)
def test_no_hooks_and_state_restored_after_exception(name: str) -> None:
    torch.manual_seed(0)
    inner = build_model("small-cnn", 3)
    inner.features.relu2.inplace = True
    model = nn.Sequential(OrderedDict(inner=inner, bomb=Bomb(after=2))).train()
    model.inner.classifier.weight.requires_grad_(False)
    x = torch.rand(2, 3, 32, 32)
    e = cheap(name, layer="inner.features.relu4") if name in ("gradcam", "gradcam_pp", "upsampled_activation") else cheap(name)
    if name in ("random", "centre"):  # they never run the model after the input check
        e(model, x, torch.tensor([0, 1]))
    else:
        with pytest.raises(RuntimeError, match="bomb"):
            e(model, x, torch.tensor([0, 1]))
    assert_no_hooks(model)
    assert model.training and all(m.training for m in model.modules())
    assert inner.features.relu2.inplace is True
    assert not model.inner.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "inner.classifier.weight")
    assert all(p.grad is None for p in model.parameters())


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_errors(zoo: dict[str, nn.Module]) -> None:
    model = zoo["small-cnn"]
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UsageError, match="images"):
        build_explainer("gradient")(model, x[0], torch.tensor([0, 1]))
    with pytest.raises(UsageError, match=r"targets\[1\] = 5"):
        build_explainer("guided_backprop")(model, x, torch.tensor([0, 5]))
    for name in ("gradcam", "gradcam_pp", "upsampled_activation"):
        with pytest.raises(UsageError, match=r"layer='features\.relu9'"):
            build_explainer(name, layer="features.relu9")(model, x, torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="layer='classifier'"):
        build_explainer("gradcam_pp", layer="classifier")(model, x, torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="n_masks"):
        build_explainer("rise", n_masks=0)
    with pytest.raises(UsageError, match="reduction"):
        build_explainer("gradient", reduction="max")
    with pytest.raises(UsageError, match="window"):
        build_explainer("occlusion", window=64)(model, x, torch.tensor([0, 1]))
    with pytest.raises(UsageError, match=r"cannot take images of shape \(2, 1, 32, 32\)"):
        build_explainer("gradient")(model, torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(UsageError, match=r"cannot take images of shape \(2, 1, 20, 20\)"):
        build_explainer("gradient")(build_model("lenet", 10), torch.rand(2, 1, 20, 20), torch.tensor([0, 1]))
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "name, captum_cls",
    [("gradient", "Saliency"), ("input_x_gradient", "InputXGradient"), ("guided_backprop", "GuidedBackprop"),
     ("deconvnet", "Deconvolution")],
)
def test_gradient_family_matches_captum(name: str, captum_cls: str) -> None:
    """Our one-backward-pass implementations give Captum's attributions (before channel reduction)."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = build_model("small-cnn", 5).eval()
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([0, 3, 4])
    ours = build_explainer(name, reduction="sum")(model, x, t)
    kwargs = {"abs": False} if captum_cls == "Saliency" else {}
    theirs = getattr(captum_attr, captum_cls)(model).attribute(x.clone().requires_grad_(True), target=t, **kwargs)
    torch.testing.assert_close(ours, theirs.detach().sum(dim=1), atol=1e-5, rtol=1e-4)


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", BASELINES)
def test_cpu_and_cuda_agree(name: str) -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", 5).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 3, 4])
    cpu = cheap(name)(model, x, t)
    gpu = cheap(name)(model.cuda(), x.cuda(), t.cuda())
    assert gpu.device.type == "cuda"
    scale = cpu.abs().max().clamp(min=1e-12)
    assert torch.allclose(cpu / scale, gpu.cpu() / scale, atol=1e-3), name


@pytest.mark.parametrize("name, options", [("rise", {"n_masks": 64, "seed": 0})])
def test_amp_safe_explainers_agree_with_float32_under_autocast(zoo: dict[str, nn.Module], name: str, options) -> None:
    """Explainers marked amp_safe give the float32 map under bfloat16 autocast (CPU).

    Occlusion is not marked: its map is a difference of probabilities, which bfloat16 rounds away
    on a model whose outputs move little (here, random weights: the map becomes constant)."""
    from an8flower.baselines import explainer_class

    model = zoo["small-cnn"]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2])
    explainer = build_explainer(name, **options)
    full = explainer(model, x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = explainer(model, x, t)
    assert half.dtype == torch.float32 and explainer_class(name).amp_safe
    for a, b in zip(full, half, strict=True):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert r > 0.98, float(r)
    assert not any(explainer_class(e).amp_safe for e in ("gradient", "gradcam", "occlusion"))
