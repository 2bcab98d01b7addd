"""``torchcam:LeGrad`` on a tiny torchvision ViT against the formula written out; refusals; hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_explainers import assert_no_hooks
from test_transformer import TARGETS, TIMM, tiny_vit

from an8flower.baselines import build_explainer
from an8flower.errors import UsageError

pytest.importorskip("torchcam")


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def direct_legrad(model, x, targets, blocks):
    """LeGrad written out: per block, the class score of heads(ln(mean of the block's output tokens)),
    its gradient at the block's attention probabilities, relu, mean over heads and queries, patch keys;
    averaged over blocks, min-max scaled, upsampled."""
    from an8flower.baselines.transformer import capture_attention

    net = model.net
    outputs = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in net.encoder.layers]
    xr = x.clone().requires_grad_(True)
    try:
        with capture_attention(model) as maps:
            model(xr)
    finally:
        for h in handles:
            h.remove()
    layer_maps = []
    for tokens, attention in list(zip(outputs, maps.tensors, strict=True))[-blocks:]:
        score = net.heads(net.encoder.ln(tokens.mean(1))).gather(1, targets.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(score, attention, retain_graph=True)
        layer_maps.append(g.relu().mean((1, 2))[:, 1:].reshape(-1, 4, 4))
    cam = torch.stack(layer_maps).mean(0)
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    cam = (cam - lo) / (hi - lo)
    return F.interpolate(cam.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()


@pytest.mark.parametrize("blocks", [0, 1])
def test_legrad_equals_the_formula(x, blocks) -> None:
    model = tiny_vit()
    out = build_explainer("torchcam:LeGrad", blocks=blocks)(model, x, TARGETS)
    torch.testing.assert_close(out, direct_legrad(model, x, TARGETS, blocks or 2), rtol=1e-4, atol=1e-5)
    assert_no_hooks(model)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_legrad_refuses_what_torchcam_cannot_read(x) -> None:
    with pytest.raises(UsageError, match="torchvision's VisionTransformer only"):
        build_explainer("torchcam:LeGrad")(tiny_vit(TIMM), x, TARGETS)
    with pytest.raises(UsageError, match="blocks=3, but the model has 2"):
        build_explainer("torchcam:LeGrad", blocks=3)(tiny_vit(), x, TARGETS)
    with pytest.raises(UsageError, match="torchcam:GradCAM is not offered: a CAM for CNNs"):
        build_explainer("torchcam:GradCAM")
