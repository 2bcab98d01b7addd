"""Gradient-based explainers: gradient, input x gradient, guided backprop, deconvnet, IG, SmoothGrad.

``gradient``, ``input_x_gradient``, ``guided_backprop``, ``deconvnet`` and ``smoothgrad`` all run
:func:`an8flower.baselines.rules.modified_gradient`, the one backward-rule implementation that the
paper's method (VEBI) uses too. ``integrated_gradients`` uses Captum's implementation.

All attributions are taken with respect to the images as the explainer receives them (in [0, 1] for
the package's models, whose normalisation is their first layer) and are reduced over colour
channels by the ``reduction`` option (one of :data:`~an8flower.baselines.base.CHANNEL_REDUCTIONS`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from an8flower.baselines._options import check_int, check_reduction
from an8flower.baselines.base import Explainer
from an8flower.baselines.registry import register_explainer
from an8flower.baselines.rules import modified_gradient
from an8flower.errors import UsageError

__all__ = ["Gradient", "InputXGradient", "GuidedBackprop", "Deconvnet", "IntegratedGradients", "SmoothGrad"]


@register_explainer("gradient")
class Gradient(Explainer):
    """Saliency by the gradient of the class score (Simonyan, Vedaldi, Zisserman, ICLR-W 2014).

    ``map = reduce_c(d S_t / d x)``, with ``S_t`` the target logit; default reduction ``abs_max``,
    ``max_c |d S_t / d x_c|`` as in the paper.
    """

    def __init__(self, reduction: str = "abs_max") -> None:
        self.reduction = check_reduction(reduction)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return modified_gradient(model, images, targets, relu="gradient")

    def options(self) -> dict[str, Any]:
        return {"reduction": self.reduction}


@register_explainer("input_x_gradient")
class InputXGradient(Explainer):
    """Input times gradient (Shrikumar et al. 2016; Ancona et al., ICLR 2018).

    ``map = reduce_c(x * d S_t / d x)``; default reduction ``abs_sum``, ``sum_c |x_c d S_t / d x_c|``.
    """

    def __init__(self, reduction: str = "abs_sum") -> None:
        self.reduction = check_reduction(reduction)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return images * modified_gradient(model, images, targets, relu="gradient")

    def options(self) -> dict[str, Any]:
        return {"reduction": self.reduction}


class _RuleGradient(Explainer):
    """The target logit's gradient under a ReLU backward rule of :mod:`an8flower.baselines.rules`."""

    relu_rule = "gradient"

    def __init__(self, reduction: str = "abs_max", stride_fix: bool = False) -> None:
        self.reduction = check_reduction(reduction)
        self.stride_fix = bool(stride_fix)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return modified_gradient(model, images, targets, relu=self.relu_rule, stride_fix=self.stride_fix)

    def options(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "stride_fix": self.stride_fix}


@register_explainer("guided_backprop")
class GuidedBackprop(_RuleGradient):
    """Guided backpropagation (Springenberg et al., ICLR-W 2015).

    The target logit back-propagated with every ReLU passing ``1[x > 0] * max(R, 0)``, max-pooling
    through its switches and convolutions transposed. Options: ``reduction`` (default ``abs_max``);
    ``stride_fix`` (default off) applies the stride fix of Oramas et al. (2019) to strided
    convolutions.
    """

    relu_rule = "guided"


@register_explainer("deconvnet")
class Deconvnet(_RuleGradient):
    """Deconvnet visualisation (Zeiler & Fergus, ECCV 2014).

    The target logit back-propagated with every ReLU passing ``max(R, 0)`` (the forward mask is
    ignored), max-pooling through its switches and convolutions transposed. Options as
    :class:`GuidedBackprop`.
    """

    relu_rule = "deconvnet"


@register_explainer("smoothgrad")
class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al., 2017): the gradient averaged over noisy copies of the image.

    ``map = reduce_c( (1/n) sum_i d S_t / d x (x + sigma * eps_i) )``, ``eps_i ~ N(0, I)``, with
    ``sigma = noise * (max(x) - min(x))`` per image (the paper recommends ``noise`` in 10-20%). The
    raw gradients are averaged, then reduced (default ``abs_max``, as :class:`Gradient`).

    Determinism: the ``n_samples`` noise tensors are drawn once per call from a CPU
    ``torch.Generator`` seeded with ``seed`` and shared by every image of the batch, so a batch gives
    exactly the per-image results and CPU and CUDA use the same noise.

    Args:
        n_samples: noisy copies per image.
        noise: noise level as a fraction of the image's value range.
        seed: seed of the noise.
        batch_size: noisy images per forward/backward pass.
        reduction: channel reduction.
    """

    def __init__(
        self, n_samples: int = 50, noise: float = 0.15, seed: int = 0, batch_size: int = 64, reduction: str = "abs_max"
    ) -> None:
        self.n_samples = check_int("n_samples", n_samples)
        if not noise >= 0:
            raise UsageError(f"noise must be >= 0, got {noise!r}")
        self.noise = float(noise)
        self.seed = int(seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.reduction = check_reduction(reduction)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        eps = torch.randn((self.n_samples, *images.shape[1:]), generator=gen).to(images)
        flat = images.flatten(1)
        sigma = (self.noise * (flat.amax(1) - flat.amin(1))).view(b, 1, 1, 1, 1)
        total = torch.zeros_like(images)
        chunk = max(1, self.batch_size // b)
        for start in range(0, self.n_samples, chunk):
            e = eps[start : start + chunk]
            noisy = (images.unsqueeze(1) + sigma * e.unsqueeze(0)).flatten(0, 1)
            grads = modified_gradient(model, noisy, targets.repeat_interleave(e.shape[0]))
            total += grads.view(b, e.shape[0], *images.shape[1:]).sum(1)
        return total / self.n_samples

    def options(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "noise": self.noise,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "reduction": self.reduction,
        }


@register_explainer("integrated_gradients")
class IntegratedGradients(Explainer):
    """Integrated gradients (Sundararajan, Taly, Yan, ICML 2017), computed by Captum.

    ``IG_i(x) = (x_i - x'_i) * int_0^1 d S_t / d x_i (x' + a (x - x')) da`` with the baseline ``x'``
    a constant image of value ``baseline`` (0 = black), the integral by ``steps``-point
    Gauss-Legendre quadrature (Captum's default method). Default reduction ``abs_sum``.

    Args:
        steps: quadrature points.
        baseline: pixel value of the baseline image.
        batch_size: interpolated images per forward/backward pass (Captum's ``internal_batch_size``).
        reduction: channel reduction.
    """

    def __init__(self, steps: int = 32, baseline: float = 0.0, batch_size: int = 64, reduction: str = "abs_sum") -> None:
        self.steps = check_int("steps", steps)
        self.baseline = float(baseline)
        self.batch_size = check_int("batch_size", batch_size)
        self.reduction = check_reduction(reduction)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients as CaptumIG

        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            attr = CaptumIG(model).attribute(
                x,
                baselines=self.baseline,
                target=targets,
                n_steps=self.steps,
                internal_batch_size=max(self.batch_size, images.shape[0]),
            )
        return attr.detach()

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "baseline": self.baseline, "batch_size": self.batch_size, "reduction": self.reduction}
