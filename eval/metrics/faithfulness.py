"""Faithfulness metrics: scores that query the model.

* :func:`deletion_auc` / :func:`insertion_auc` (Petsiuk, Das, Saenko, BMVC 2018, "RISE"): how fast
  the target probability falls when the most relevant pixels are removed first, or rises when
  they are inserted first.
* :func:`randomisation_similarity` (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency
  Maps"): how similar the heatmaps stay when the model's weights are randomised, layer by layer
  from the top; an explanation that does not change is not explaining the model.

Every model-based metric runs the model in eval mode and restores its mode afterwards (errors
included), as the explainers do: a model handed over in train mode would otherwise update its
batch-norm running statistics on the perturbed images. Images go to the model's device and the
scores come back there as float64. The caller's model is never modified.

**Baselines** (what replaces deleted pixels, or where insertion starts), :data:`BASELINES`:

* ``"zeros"``: black (RISE's deletion);
* ``"blur"``: the image blurred by a Gaussian (RISE's insertion). It keeps each region's colour, so
  on an8Flower, whose classes are colours of parts, the blurred image is already classified
  correctly: insertion starts near p = 1 for every heatmap and cannot rank explainers (on the
  64 px published board, 0.91 - 0.99 for every row, ``random`` included);
* ``"grey"``: uniform grey 0.5 (:data:`GREY`), which carries no colour, no shape and no texture;
  in distribution in the sense that an8Flower's palettes and images are in [0, 1] around it. The
  leaderboard's default for deletion and insertion (:data:`an8flower.eval.scoring.METRICS`);
* ``"mean"``: each image's per-channel mean colour, a uniform fill that keeps the global colour
  balance but no part colour;
* a number (a uniform fill) or a tensor broadcastable to the images.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from an8flower.baselines.base import eval_mode
from an8flower.errors import UsageError
from an8flower.eval.metrics._checks import as_tensor, check_finite, check_heatmaps, check_positive_int, chunks
from an8flower.eval.metrics._ranks import average_ranks, spearman_rows

__all__ = [
    "BASELINES",
    "GREY",
    "BLUR_KERNEL_SIZE",
    "BLUR_SIGMA",
    "deletion_curve",
    "insertion_curve",
    "deletion_auc",
    "insertion_auc",
    "randomisable_layers",
    "randomisation_similarity",
]

#: The blurred baseline of RISE: a Gaussian of this size and standard deviation (pixels).
BLUR_KERNEL_SIZE = 11
BLUR_SIGMA = 5.0
#: The value of every channel of the ``"grey"`` baseline.
GREY = 0.5
#: The named baselines of :func:`deletion_auc` and :func:`insertion_auc` (see the module docstring).
BASELINES: tuple[str, ...] = ("zeros", "blur", "grey", "mean")

Baseline = str | float | torch.Tensor
Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _model_device(model: nn.Module) -> torch.device:
    tensor: torch.Tensor
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _check_images(images: object, device: torch.device) -> torch.Tensor:
    x = as_tensor(images, "images")
    if x.dim() != 4:
        raise UsageError(f"images must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UsageError(f"images must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise UsageError("images is an empty batch")
    x = x.to(device)
    check_finite(x, name="images")
    return x


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"the model must return logits (B, K) for B images, got {shape}")
    return out


def _check_targets(model: nn.Module, images: torch.Tensor, targets: object | None) -> torch.Tensor:
    """``targets`` as a long (B,) tensor on the images' device; ``None`` means the predicted class."""
    b = images.shape[0]
    with torch.no_grad():
        logits = _logits(model, images if targets is None else images[:1])
    if targets is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(targets, device=images.device)
    if t.dim() == 0:
        t = t.expand(b)
    if t.dim() != 1 or t.shape[0] != b:
        raise UsageError(f"targets must have shape ({b},) to match images, got {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise UsageError(f"targets must be integer class indices, got {t.dtype}")
    t = t.long()
    bad = ((t < 0) | (t >= logits.shape[1])).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise UsageError(f"targets[{i}] = {int(t[i])} is out of range for a model with {logits.shape[1]} classes")
    return t


def gaussian_blur(images: torch.Tensor, sigma: float = BLUR_SIGMA, size: int = BLUR_KERNEL_SIZE) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, each channel alone, edges replicated."""
    half = size // 2
    offsets = torch.arange(size, dtype=torch.float64, device=images.device) - half
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    c = images.shape[1]
    x = nn.functional.pad(images, (half, half, half, half), mode="replicate")
    x = nn.functional.conv2d(x, kernel.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return nn.functional.conv2d(x, kernel.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def _baseline_images(images: torch.Tensor, baseline: Baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(images)
        if baseline == "blur":
            return gaussian_blur(images)
        if baseline == "grey":
            return torch.full_like(images, GREY)
        if baseline == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        raise UsageError(f"unknown baseline {baseline!r}; choose {', '.join(map(repr, BASELINES))}, a number or a tensor")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise UsageError(f"baseline must be finite, got {baseline!r}")
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            out = baseline.to(device=images.device, dtype=images.dtype).expand_as(images)
        except RuntimeError:
            raise UsageError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to images {tuple(images.shape)}"
            ) from None
        check_finite(out, name="baseline")
        return out
    raise UsageError(f"baseline must be one of {', '.join(map(repr, BASELINES))}, a number or a tensor, got {type(baseline).__name__}")


def _perturbation_curve(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None,
    steps: int,
    baseline: Baseline,
    chunk_size: int,
    insert: bool,
) -> torch.Tensor:
    with eval_mode(model):
        return _perturbation_curve_eval(model, images, heatmaps, targets, steps, baseline, chunk_size, insert)


def _perturbation_curve_eval(model: nn.Module, images: torch.Tensor, heatmaps: torch.Tensor,
                             targets: torch.Tensor | None, steps: int, baseline: Baseline, chunk_size: int,
                             insert: bool) -> torch.Tensor:
    device = _model_device(model)
    x = _check_images(images, device)
    h = check_heatmaps(heatmaps).to(device)
    b, _, hh, ww = x.shape
    if tuple(h.shape) != (b, hh, ww):
        raise UsageError(f"heatmaps has shape {tuple(h.shape)} but images need ({b}, {hh}, {ww})")
    n = hh * ww
    steps = check_positive_int(steps, "steps")
    if steps > n:
        raise UsageError(f"steps = {steps} exceeds the {n} pixels of an image")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_finite(h)
    t = _check_targets(model, x, targets)
    base = _baseline_images(x, baseline)
    start, end = (base, x) if insert else (x, base)

    # rank[b, p]: position of pixel p in decreasing heatmap order (ties in raster order).
    order = torch.sort(h.reshape(b, n), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=device).expand(b, n))
    changed = torch.arange(steps + 1, device=device) * n // steps  # pixels changed after step i
    curve = torch.empty(b * (steps + 1), dtype=torch.float64, device=device)
    pairs = chunks(b * (steps + 1), chunk_size)
    with torch.no_grad():
        for sl in tqdm(pairs, total=-(-b * (steps + 1) // chunk_size), desc="insertion" if insert else "deletion",
                       disable=None, leave=False):
            j = torch.arange(sl.start, sl.stop, device=device)
            img, step = j // (steps + 1), j % (steps + 1)
            swap = (rank[img] < changed[step].unsqueeze(1)).view(-1, 1, hh, ww)
            probs = torch.softmax(_logits(model, torch.where(swap, end[img], start[img])).double(), dim=1)
            curve[sl] = probs.gather(1, t[img].unsqueeze(1)).squeeze(1)
    return curve.view(b, steps + 1)


def _auc(curve: torch.Tensor, n_pixels: int) -> torch.Tensor:
    steps = curve.shape[1] - 1
    frac = (torch.arange(steps + 1, device=curve.device) * n_pixels // steps).double() / n_pixels
    return torch.trapezoid(curve, frac, dim=1)


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = 100,
    baseline: Baseline = "zeros",
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The curve under :func:`deletion_auc`: (B, steps + 1) float64, ``p_0`` (intact image) first."""
    return _perturbation_curve(model, images, heatmaps, targets, steps, baseline, chunk_size, insert=False)


def insertion_curve(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = 100,
    baseline: Baseline = "blur",
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The curve under :func:`insertion_auc`: (B, steps + 1) float64, ``p_0`` (baseline) first."""
    return _perturbation_curve(model, images, heatmaps, targets, steps, baseline, chunk_size, insert=True)


def deletion_auc(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = 100,
    baseline: Baseline = "zeros",
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Deletion AUC (Petsiuk, Das, Saenko, BMVC 2018, "RISE"), (B,) float64 in [0, 1]; lower is better.

    Pixels are ordered by decreasing heatmap value (ties in raster order). After step i of
    ``steps``, the first ``n_i = floor(i N / steps)`` pixels (all channels) are replaced by the
    baseline, and ``p_i`` is the softmax probability of the target class. The score is the
    trapezoidal area under ``(x_i, p_i)``, ``x_i = n_i / N`` the fraction of pixels removed; when N
    is divisible by ``steps`` it equals RISE's ``(sum_i p_i - p_0 / 2 - p_steps / 2) / steps``.

    The ``B * (steps + 1)`` perturbed images are built on the fly and go through the model
    ``chunk_size`` at a time, without gradients.

    Args:
        model: classifier returning logits (B, K); run in eval mode, its mode restored.
        images: (B, C, H, W) floating, moved to the model's device.
        heatmaps: (B, H, W) floating, larger = more relevant.
        targets: (B,) class indices, or ``None`` for the model's predicted class.
        steps: number of steps, 1 <= steps <= H*W (default 100).
        baseline: what replaces removed pixels: ``"zeros"`` (default, as RISE), ``"blur"`` (see
            :func:`insertion_auc`), ``"grey"`` (uniform 0.5), ``"mean"`` (each image's
            per-channel mean), a number, or a tensor broadcastable to ``images`` (see the module
            docstring).
        chunk_size: perturbed images per forward pass (default 64).

    Returns:
        (B,) float64 on the model's device.
    """
    curve = deletion_curve(model, images, heatmaps, targets, steps, baseline, chunk_size=chunk_size)
    return _auc(curve, heatmaps.shape[-2] * heatmaps.shape[-1])


def insertion_auc(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps: torch.Tensor,
    targets: torch.Tensor | None = None,
    steps: int = 100,
    baseline: Baseline = "blur",
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Insertion AUC (Petsiuk, Das, Saenko, BMVC 2018, "RISE"), (B,) float64 in [0, 1]; higher is better.

    The mirror of :func:`deletion_auc`: start from the baseline and copy the image's pixels into
    it, most relevant first; ``p_i`` after ``n_i = floor(i N / steps)`` pixels are inserted, area
    by the trapezoidal rule over ``x_i = n_i / N``.

    Args:
        model, images, heatmaps, targets, steps, chunk_size: as :func:`deletion_auc`.
        baseline: the starting image: ``"blur"`` (default, as RISE: the image blurred by a
            Gaussian of size :data:`BLUR_KERNEL_SIZE` = 11 and sigma :data:`BLUR_SIGMA` = 5,
            channels separately, edges replicated where RISE pads with zeros), ``"zeros"``,
            ``"grey"``, ``"mean"``, a number, or a tensor broadcastable to ``images``. On
            an8Flower use ``"grey"`` (the leaderboard does): the blurred image keeps the colours
            that decide the class.

    Returns:
        (B,) float64 on the model's device.
    """
    curve = insertion_curve(model, images, heatmaps, targets, steps, baseline, chunk_size=chunk_size)
    return _auc(curve, heatmaps.shape[-2] * heatmaps.shape[-1])


# ----------------------------------------------------------------------------- randomisation

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in ``named_modules`` order (input first)."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]


def _reinitialise(layer: nn.Module, generator: torch.Generator) -> None:
    """Redraw the parameters of ``layer`` and its submodules from PyTorch's default initialisers.

    Weights of two or more dimensions: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in`` the
    size of one output slice (PyTorch's Kaiming-uniform default for Linear/Conv); 1-D parameters of
    a module with such a weight (biases): the same bound; normalisation layers: scale 1, shift 0 and
    running statistics reset (their ``reset_parameters``); any other 1-D parameter: U(-1/sqrt(n),
    1/sqrt(n)), n its length. Draws come from ``generator`` on the CPU, so they do not depend on the
    device or touch the global RNG.
    """
    for module in layer.modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, _NORM_LAYERS):
            with torch.no_grad():
                for name, p in own.items():
                    p.fill_(1.0 if name == "weight" else 0.0)
            if hasattr(module, "reset_running_stats"):
                # cast: torch types an attribute not declared on nn.Module as Tensor | Module.
                cast(Any, module).reset_running_stats()
            continue
        weight = own.get("weight")
        fan_in = weight[0].numel() if weight is not None and weight.dim() >= 2 else None
        with torch.no_grad():
            for p in own.values():
                if p.dim() >= 2:
                    bound = 1 / math.sqrt(max(1, p[0].numel()))
                elif fan_in is not None:
                    bound = 1 / math.sqrt(max(1, fan_in))
                else:
                    bound = 1 / math.sqrt(max(1, p.numel()))
                draw = torch.empty(p.shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
                p.copy_(draw)


def _explain(explainer: Explainer, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    h = explainer(model, images, targets)
    if not isinstance(h, torch.Tensor):
        raise UsageError(f"the explainer must return a tensor (B, H, W), got {type(h).__name__}")
    h = check_heatmaps(h, name="explainer output").detach()
    if h.shape[0] != images.shape[0]:
        raise UsageError(f"the explainer returned {h.shape[0]} heatmaps for {images.shape[0]} images")
    check_finite(h, name="explainer output")
    return h.reshape(h.shape[0], -1)


def randomisation_similarity(
    model: nn.Module,
    explainer: Explainer,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    layers: Sequence[str] | None = None,
    *,
    cascade: bool = True,
    absolute: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Model parameter randomisation test (Adebayo et al., NeurIPS 2018, "Sanity Checks for Saliency Maps").

    The heatmaps of the trained model are compared with those of copies whose weights are
    re-initialised layer by layer from the top (the output) down. Column l of the result is the
    Spearman rank correlation, per image, between the trained model's heatmap and the heatmap after
    randomising the top ``l + 1`` layers (``cascade=True``, the cascading test) or layer
    ``reversed(layers)[l]`` alone (``cascade=False``, the independent test)::

        S[b, l] = pearson(rank(h_b), rank(h_b^(l)))      ranks averaged over ties

    A faithful explainer should fall towards 0 as more layers are randomised; one that ignores the
    model scores 1 throughout.

    Args:
        model: the trained classifier (never modified: every randomised model is a deep copy).
        explainer: any callable ``(model, images, targets) -> (B, H, W)`` heatmaps.
        images: (B, C, H, W) floating, moved to the model's device.
        targets: (B,) class indices, or ``None`` for the trained model's predicted class (kept for
            every randomised model).
        layers: module names (``model.named_modules()``), listed input first; default
            :func:`randomisable_layers`. Randomised from the last one to the first.
        cascade: cascading (default) or independent randomisation.
        absolute: correlate ``|h|`` instead of ``h`` (Adebayo et al. report both).
        seed: seeds the re-initialisation; layer ``layers[i]`` always gets the same draw for a
            given seed, in either mode. Parameters are redrawn from PyTorch's default
            initialisers: weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform, as Linear
            and Conv), biases the same bound, normalisation layers reset to scale 1, shift 0 and
            fresh running statistics; draws come from a CPU generator (the global RNG is
            untouched and the weights do not depend on the device).

    Returns:
        (B, L) float64, L = len(layers), column order top layer first. NaN where a heatmap is
        constant (no ranking).
    """
    with eval_mode(model):
        return _randomisation_eval(model, explainer, images, targets, layers, cascade, absolute, seed)


def _randomisation_eval(model: nn.Module, explainer: Explainer, images: torch.Tensor, targets: torch.Tensor | None,
                        layers: Sequence[str] | None, cascade: bool, absolute: bool, seed: int) -> torch.Tensor:
    device = _model_device(model)
    x = _check_images(images, device)
    t = _check_targets(model, x, targets)
    names = list(randomisable_layers(model) if layers is None else layers)
    if not names:
        raise UsageError("layers is empty: nothing to randomise")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise UsageError(f"layers: the model has no module named {name!r}")
        if not any(True for _ in modules[name].parameters()):
            raise UsageError(f"layers: module {name!r} has no parameters to randomise")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise UsageError(f"seed must be an integer, got {seed!r}")

    def prepare(h: torch.Tensor) -> torch.Tensor:
        return h.abs() if absolute else h

    reference = average_ranks(prepare(_explain(explainer, model, x, t)))
    out = torch.empty((x.shape[0], len(names)), dtype=torch.float64, device=reference.device)
    randomised = copy.deepcopy(model)
    for column, index in enumerate(reversed(range(len(names)))):
        if not cascade:
            randomised = copy.deepcopy(model)
        state = np.random.SeedSequence([int(seed), index]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        _reinitialise(randomised.get_submodule(names[index]), generator)
        out[:, column] = spearman_rows(reference, prepare(_explain(explainer, randomised, x, t)))
    return out
