"""Transformer explainers on tiny ViTs (2 blocks, 32 px, 2 heads): attention capture, rollout against
hand-computed values, Chefer et al.'s relevance against a direct autograd computation, the CAMs on
token layers, refusals, hygiene."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_explainers import assert_no_hooks
from torch import nn

from an8flower.baselines import build_explainer
from an8flower.baselines.cam import default_cam_layer
from an8flower.baselines.transformer import (
    capture_attention,
    gradient_weighted_relevance,
    rollout,
    token_grid,
)
from an8flower.errors import UsageError
from an8flower.eval.models import build_model

TV = "vit-tiny[hidden_dim=16,image_size=32,mlp_dim=32,num_heads=2,num_layers=2,patch_size=8]"
TIMM = "timm:deit_tiny_patch16_224[depth=2,embed_dim=16,img_size=32,num_heads=2,patch_size=8]"
TARGETS = torch.tensor([0, 2, 1])


def tiny_vit(name: str = TV, seed: int = 0) -> nn.Module:
    """A tiny ViT with a random (not zero-initialised) head, so that gradients reach the attention."""
    if name == TIMM:
        pytest.importorskip("timm")
    model = build_model(name, 3, seed=seed).eval()
    head = model.net.heads.head if hasattr(model.net, "heads") else model.net.head
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed + 7)))
    return model


@pytest.fixture(params=[TV, TIMM], ids=["torchvision", "timm"])
def vit(request) -> nn.Module:
    return tiny_vit(request.param)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The normalised tokens each attention module receives (torchvision ln_1, timm norm1 outputs)."""
    norms = [m for n, m in model.named_modules() if n.endswith(("ln_1", "norm1"))]
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for m in norms]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_captured_attention_is_the_blocks_softmax_and_the_output_is_unchanged(vit, x) -> None:
    with torch.no_grad():
        expected_logits = vit(x)
        with capture_attention(vit) as maps:
            logits = vit(x)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    inputs = block_inputs(vit, x)
    blocks = [m for n, m in vit.named_modules() if isinstance(m, nn.MultiheadAttention) or hasattr(m, "fused_attn")]
    assert len(maps.tensors) == len(blocks) == 2
    for attention, tokens, block in zip(maps.tensors, inputs, blocks, strict=True):
        if isinstance(block, nn.MultiheadAttention):  # torch's own implementation as the reference
            _, reference = block(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
        else:
            b, n, e = tokens.shape
            q, k, _ = block.qkv(tokens).view(b, n, 3, 2, e // 2).permute(2, 0, 3, 1, 4)
            reference = (q @ k.transpose(-2, -1) / math.sqrt(e // 2)).softmax(-1)
        assert attention.shape == (3, 2, 17, 17)
        torch.testing.assert_close(attention.detach(), reference, rtol=1e-5, atol=1e-6)
    assert_no_hooks(vit)
    assert all(m.fused_attn for m in blocks if hasattr(m, "fused_attn"))


def test_rollout_equals_the_hand_computed_product() -> None:
    # one head, tokens (cls, p1, p2); M_l = rownorm(0.5 (A_l + I)); R = M_2 M_1
    a1 = torch.tensor([[0.0, 0.5, 0.5], [0, 1, 0], [0, 0, 1]])  # M_1 = [[.5,.25,.25],[0,1,0],[0,0,1]]
    a2 = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])  # M_2 = [[.5,.5,0],[0,1,0],[0,0,1]]
    r = rollout([a1.view(1, 1, 3, 3), a2.view(1, 1, 3, 3)])
    torch.testing.assert_close(r[0, 0], torch.tensor([0.25, 0.625, 0.125]))
    # max over two heads: [[0,1,1],...]: 0.5 (F + I) has row sum 1.5, renormalised to thirds
    heads = torch.stack([torch.eye(3)[[1, 1, 2]], torch.eye(3)[[2, 1, 2]]]).unsqueeze(0)
    torch.testing.assert_close(rollout([heads], "max")[0, 0], torch.full((3,), 1 / 3))
    torch.testing.assert_close(rollout([heads], "min")[0, 0], torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(rollout([heads], "mean")[0, 0], torch.tensor([0.5, 0.25, 0.25]))


def test_discard_ratio_zeroes_the_smallest_entries_but_the_class_tokens_own() -> None:
    a = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.25, 0.27, 0.48]]).view(1, 1, 3, 3)
    # 9 entries, ratio 0.34 -> the 3 smallest are 0.1 at (0, 0) (spared), 0.2 and 0.25 (set to 0)
    kept = torch.tensor([[0.1, 0.6, 0.3], [0.0, 0.5, 0.3], [0.0, 0.27, 0.48]])
    m = 0.5 * (kept + torch.eye(3))
    torch.testing.assert_close(rollout([a], discard_ratio=0.34)[0], m / m.sum(-1, keepdim=True))


def test_rollout_of_a_vit_with_uniform_attention_is_the_closed_form(x) -> None:
    """Zero query and key projections: every attention is uniform, U = J / N, and
    prod (0.5 (U + I)) over L blocks = 0.5^L I + (1 - 0.5^L) U: every patch gets (1 - 0.5^L) / N."""
    model = tiny_vit()
    with torch.no_grad():
        for block in model.net.encoder.layers:
            block.self_attention.in_proj_weight[:32].zero_()
            block.self_attention.in_proj_bias[:32].zero_()
    out = build_explainer("vit_rollout")(model, x, TARGETS)
    torch.testing.assert_close(out, torch.full_like(out, 0.75 / 17))


def direct_chefer(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s relevance, written out on torchvision's ViT: our own forward from its weights
    (explicit attention, retain_grad), autograd, then R <- R + mean_h((dA * A)^+) R."""
    net = model.net
    z = model.normalize(x)
    tokens = net.conv_proj(z).flatten(2).transpose(1, 2)
    tokens = torch.cat([net.class_token.expand(x.shape[0], -1, -1), tokens], 1) + net.encoder.pos_embedding
    attentions = []
    for block in net.encoder.layers:
        sa = block.self_attention
        y = block.ln_1(tokens)
        b, n, e = y.shape
        q, k, v = F.linear(y, sa.in_proj_weight, sa.in_proj_bias).split(e, -1)
        q, k, v = (t.view(b, n, sa.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // sa.num_heads), -1)
        a.retain_grad()
        attentions.append(a)
        tokens = tokens + sa.out_proj((a @ v).transpose(1, 2).reshape(b, n, e))
        tokens = tokens + block.mlp(block.ln_2(tokens))
    logits = net.heads(net.encoder.ln(tokens)[:, 0])
    torch.testing.assert_close(logits, model(x))
    logits.gather(1, targets.view(-1, 1)).sum().backward()
    r = torch.eye(17).repeat(x.shape[0], 1, 1)
    for a in attentions:
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    grid = r[:, 0, 1:].reshape(-1, 1, 4, 4).detach()
    return F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]


def test_attention_relevance_equals_the_direct_autograd_computation(x) -> None:
    model = tiny_vit()
    expected = direct_chefer(model, x, TARGETS)
    model.zero_grad(set_to_none=True)
    out = build_explainer("vit_relevance")(model, x, TARGETS)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    assert out.flatten(1).std(1).min() > 0
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    assert_no_hooks(model)


def test_gradient_weighted_relevance_of_identity_gradients_is_hand_computed() -> None:
    a = torch.tensor([[0.5, 0.5], [0.0, 1.0]]).view(1, 1, 2, 2)
    g = torch.tensor([[2.0, -1.0], [1.0, 1.0]]).view(1, 1, 2, 2)
    # (g a)^+ = [[1, 0], [0, 1]]; R = I + I I = 2 I
    torch.testing.assert_close(gradient_weighted_relevance([a], [g])[0], 2 * torch.eye(2))


def test_transformer_explainers_are_batched(vit, x) -> None:
    for name in ("vit_rollout", "vit_relevance", "gradcam"):
        e = build_explainer(name)
        batch = e(vit, x, TARGETS)
        one = torch.cat([e(vit, x[i : i + 1], TARGETS[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, one, rtol=1e-4, atol=1e-6)


def test_vit_cam_layer_is_the_last_blocks_first_norm(vit) -> None:
    expected = "net.encoder.layers.encoder_layer_1.ln_1" if hasattr(vit.net, "encoder") else "net.blocks.1.norm1"
    assert default_cam_layer(vit) == expected


def test_gradcam_on_tokens_equals_the_formula_on_the_patch_grid(vit, x) -> None:
    layer = vit.get_submodule(default_cam_layer(vit))
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        xr = x.clone().requires_grad_(True)
        score = vit(xr).gather(1, TARGETS.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(score, seen[0])
    finally:
        handle.remove()
    a = seen[0].detach()[:, 1:].reshape(3, 4, 4, 16)  # class token dropped, patches row by row
    g = g[:, 1:].reshape(3, 4, 4, 16)
    cam = (g.mean((1, 2), keepdim=True) * a).sum(-1).clamp(min=0)
    expected = F.interpolate(cam.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(build_explainer("gradcam")(vit, x, TARGETS), expected, rtol=1e-4, atol=1e-6)


def test_pytorch_grad_cam_on_a_vit_equals_ours_after_min_max(vit, x) -> None:
    """Their GradCAM with their documented ViT recipe (layer norm1 of the last block, tokens reshaped
    to the grid with the class token dropped) is our gradcam, min-max scaled."""
    pytest.importorskip("pytorch_grad_cam")
    ours = build_explainer("gradcam")(vit, x, TARGETS)
    theirs = build_explainer("gradcam:GradCAM")(vit, x, TARGETS)
    flat = ours.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    torch.testing.assert_close((ours - lo) / (hi - lo), theirs, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_relu_rules_are_refused_on_a_gelu_vit(name, x) -> None:
    """Guided backprop and deconvnet need ReLUs: a GELU ViT is refused, not explained by its gradient."""
    with pytest.raises(UsageError):
        build_explainer(name)(tiny_vit(), x, TARGETS)


def test_attention_explainers_refuse_a_cnn(x) -> None:
    with pytest.raises(UsageError, match="no attention modules"):
        build_explainer("vit_rollout")(build_model("small-cnn", 3, seed=0), x, TARGETS)


def test_capture_restores_timm_flags_and_hooks_when_the_forward_fails(x) -> None:
    model = tiny_vit(TIMM)
    with pytest.raises((RuntimeError, AssertionError)), capture_attention(model):
        model(torch.rand(1, 3, 48, 48))  # wrong size for the patch embedding
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert_no_hooks(model)


def test_token_grid_finds_the_patch_grid_and_prefix_tokens(vit, x) -> None:
    assert token_grid(vit, x, 17) == (1, 4, 4)
    with pytest.raises(UsageError, match="cannot hold"):
        token_grid(vit, x, 10)


@pytest.mark.parametrize("opts, match", [({"head_fusion": "median"}, "head_fusion"),
                                         ({"discard_ratio": 1.0}, "discard_ratio")])
def test_rollout_options_are_checked(opts, match) -> None:
    with pytest.raises(UsageError, match=match):
        build_explainer("vit_rollout", **opts)


def test_vebi_refuses_a_transformer(x) -> None:
    with pytest.raises(UsageError, match="vebi does not apply to .* a transformer"):
        build_explainer("vebi").fit(tiny_vit(), [(x, TARGETS)])


def test_pytorch_grad_cam_ablation_cam_on_a_vit_is_the_library_with_its_vit_ablation_layer(x) -> None:
    """AblationCAM on a ViT is the library's recipe for ViTs called directly: its AblationLayerVit,
    which ablates channels of the (B, N, D) tokens, and the tokens laid out on the patch grid."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from an8flower.baselines.cam import resolve_layer

    model = tiny_vit()
    ours = build_explainer("gradcam:AblationCAM")(model, x, TARGETS)
    layer = resolve_layer(model, "auto")[1]

    def grid(t: torch.Tensor) -> torch.Tensor:  # the library's documented ViT transform: class token dropped
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    cam = AblationCAM(model, [layer], reshape_transform=grid, ablation_layer=AblationLayerVit())
    theirs = cam(x.clone().requires_grad_(True), [ClassifierOutputTarget(int(t)) for t in TARGETS])
    cam.activations_and_grads.release()
    assert ours.shape == (3, 32, 32) and torch.isfinite(ours).all() and (ours.flatten(1).amax(1) > 0).all()
    torch.testing.assert_close(ours, torch.from_numpy(theirs).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["zennit:EpsilonPlusFlat", "zennit:EpsilonGammaBox", "zennit:EpsilonAlpha2Beta1"])
def test_zennit_composites_refuse_a_transformer_naming_attention(name, x) -> None:
    pytest.importorskip("zennit")
    with pytest.raises(UsageError, match=r"none for attention.*use lxt:AttnLRP"):
        build_explainer(name)(tiny_vit(), x, TARGETS)
