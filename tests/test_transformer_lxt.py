"""``lxt:AttnLRP``: LXT's rules for torchvision ViTs against a direct computation, relevance
conservation, the classes LXT patches put back, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_explainers import assert_no_hooks
from test_transformer import TARGETS, TIMM, tiny_vit
from torch import nn

from an8flower.baselines import build_explainer
from an8flower.errors import UsageError

pytest.importorskip("lxt")


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def direct_attn_lrp(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The rules written out (Achtibat et al. 2024, as LXT applies them to torchvision's ViT) on our
    own forward: LayerNorm with its standard deviation held constant, GELU by the identity rule
    (gradient gelu(x) / x), no gradient through the softmax (query and key detached); relevance
    x~ * dS/dx~ at the normalised image, summed over channels."""
    net = model.net

    def layer_norm(ln: nn.LayerNorm, t: torch.Tensor) -> torch.Tensor:
        c = t - t.mean(-1, keepdim=True)
        return c / (c.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt().detach() * ln.weight + ln.bias

    def gelu(t: torch.Tensor) -> torch.Tensor:
        y = F.gelu(t)
        return t * (y / t).detach()

    z = model.normalize(x).detach().requires_grad_(True)
    tokens = net.conv_proj(z).flatten(2).transpose(1, 2)
    tokens = torch.cat([net.class_token.expand(x.shape[0], -1, -1), tokens], 1) + net.encoder.pos_embedding
    for block in net.encoder.layers:
        sa = block.self_attention
        y = layer_norm(block.ln_1, tokens)
        b, n, e = y.shape
        w, bias = sa.in_proj_weight.split(e), sa.in_proj_bias.split(e)
        q, k, v = F.linear(y.detach(), w[0], bias[0]), F.linear(y.detach(), w[1], bias[1]), F.linear(y, w[2], bias[2])
        q, k, v = (t.view(b, n, sa.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // sa.num_heads), -1)
        tokens = tokens + sa.out_proj((a @ v).transpose(1, 2).reshape(b, n, e))
        mlp = block.mlp
        tokens = tokens + mlp[3](gelu(mlp[0](layer_norm(block.ln_2, tokens))))
    logits = net.heads(layer_norm(net.encoder.ln, tokens)[:, 0])
    torch.testing.assert_close(logits, model(x))
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), z)
    return (z * grad).sum(1).detach()


def test_attn_lrp_equals_the_rules_written_out(x) -> None:
    model = tiny_vit()
    out = build_explainer("lxt:AttnLRP")(model, x, TARGETS)
    torch.testing.assert_close(out, direct_attn_lrp(model, x, TARGETS), rtol=1e-4, atol=1e-6)


def test_relevance_is_conserved_without_biases(x) -> None:
    """With every bias, the position embedding and the class token at 0, the pixel relevance sums to
    the target logit (measured gap 6e-8 to 1e-6 relative); with them, it does not."""
    model = tiny_vit()
    with torch.no_grad():
        logits = model(x).gather(1, TARGETS.view(-1, 1)).squeeze(1)
    kept = build_explainer("lxt:AttnLRP")(model, x, TARGETS).double().sum((1, 2))
    assert ((kept - logits).abs() > 1e-3 * logits.abs()).any()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "pos_embedding", "class_token")):
                p.zero_()
        logits = model(x).gather(1, TARGETS.view(-1, 1)).squeeze(1).double()
    total = build_explainer("lxt:AttnLRP")(model, x, TARGETS).double().sum((1, 2))
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-6)
    one_hot = build_explainer("lxt:AttnLRP", output="one_hot")(model, x, TARGETS).double().sum((1, 2))
    torch.testing.assert_close(one_hot, torch.ones_like(one_hot), rtol=1e-4, atol=1e-6)


def test_the_patched_classes_are_put_back(x) -> None:
    before = {cls: dict(cls.__dict__) for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)}
    model = tiny_vit()
    grad_before = build_explainer("vit_relevance")(model, x, TARGETS)
    build_explainer("lxt:AttnLRP")(model, x, TARGETS)
    for cls, attrs in before.items():
        assert dict(cls.__dict__) == attrs, cls
    torch.testing.assert_close(build_explainer("vit_relevance")(model, x, TARGETS), grad_before)
    assert_no_hooks(model)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_models_lxt_does_not_patch_are_refused(x) -> None:
    with pytest.raises(UsageError, match="torchvision's VisionTransformer only"):
        build_explainer("lxt:AttnLRP")(tiny_vit(TIMM), x, TARGETS)


def test_the_licence_is_listed_with_the_names(capsys) -> None:
    from an8flower.baselines.adapters import catalogue
    from an8flower.cli import main

    entry = next(e for e in catalogue() if e["prefix"] == "lxt")
    assert entry["methods"] == ["lxt:AttnLRP"] and "personal and scientific" in entry["licence"]
    assert main(["explainers"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "lxt:AttnLRP" in out and "used free of charge for personal and scientific purposes only" in out
