"""What a Vision Transformer looks like to the explainers: its attention blocks, its patch grid, and
whether a rule defined at ReLUs applies to it.

Architecture helpers only (no explainer, no registry), so the CAM family, the adapters, VEBI and
the training recipe can ask them without importing the transformer explainers
(:mod:`an8flower.baselines.transformer`).
"""

from __future__ import annotations

import torch
from torch import nn

from an8flower.errors import UsageError

__all__ = [
    "NON_RELU_ACTIVATIONS", "attention_modules", "is_timm_attention", "is_transformer", "require_relu_network", "token_grid", "tokens_to_grid",
]


def is_timm_attention(m: nn.Module) -> bool:
    return hasattr(m, "fused_attn") and hasattr(m, "qkv") and hasattr(m, "num_heads")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every self-attention module the transformer explainers can read, in
    registration order (torchvision's ``nn.MultiheadAttention``, timm's ``Attention``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) or is_timm_attention(m)]


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` has attention blocks (see :func:`attention_modules`)."""
    return bool(attention_modules(model))


#: Activation modules whose presence means a model is not a ReLU network.
NON_RELU_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.SELU,
                                                     nn.CELU, nn.LeakyReLU, nn.PReLU, nn.Softplus)


def require_relu_network(model: nn.Module, method: str) -> None:
    """UsageError naming ``method`` and the reason unless ``model`` is a ReLU network: it has
    ``nn.ReLU`` modules, no attention blocks and none of :data:`NON_RELU_ACTIVATIONS`."""
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, NON_RELU_ACTIVATIONS)})
    if is_transformer(model) or others or not any(isinstance(m, nn.ReLU) for m in model.modules()):
        what = f"{', '.join(others)} activations" if others else "no nn.ReLU modules"
        kind = "a transformer with " if is_transformer(model) else ""
        raise UsageError(f"{method} needs a ReLU network (its rule is defined at ReLUs); {type(model).__name__} is {kind}"
                         f"{what}: refused rather than returning the plain gradient")


def token_grid(model: nn.Module, images: torch.Tensor, n_tokens: int) -> tuple[int, int, int]:
    """``(n_prefix, g_h, g_w)``: how ``n_tokens`` tokens of a ViT on ``images`` lay out.

    The patch grid comes from the patch embedding, the first ``nn.Conv2d`` whose stride equals its
    kernel (``g = H // stride``); the ``n_prefix = n_tokens - g_h g_w`` tokens before the patches
    are the class token (and timm's register or distillation tokens).

    Raises:
        UsageError: no such convolution, or fewer tokens than patches.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == tuple(m.stride) and m.stride[0] > 1:
            gh, gw = images.shape[2] // m.stride[0], images.shape[3] // m.stride[1]
            if gh * gw <= n_tokens:
                return n_tokens - gh * gw, gh, gw
            raise UsageError(f"{n_tokens} tokens cannot hold the {gh} x {gw} patch grid of a {type(model).__name__} "
                             f"on {tuple(images.shape[2:])} images")
    raise UsageError(f"{type(model).__name__} has no patch embedding (an nn.Conv2d with stride = kernel): cannot lay "
                     "its tokens out on the image")


def tokens_to_grid(tokens: torch.Tensor, n_prefix: int, gh: int, gw: int) -> torch.Tensor:
    """(B, N, D) tokens -> (B, D, g_h, g_w) feature maps: the prefix tokens dropped, the patch tokens
    (row by row) laid out on the patch grid. pytorch-grad-cam's documented ``reshape_transform`` for ViTs."""
    b, _, d = tokens.shape
    return tokens[:, n_prefix:].reshape(b, gh, gw, d).permute(0, 3, 1, 2)
