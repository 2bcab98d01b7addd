"""VEBI, Visual Explanation by Interpretation (Oramas, Wang and Tuytelaars, ICLR 2019).

The method, as the authors' released code does it:

1. **Feature vector** (:mod:`an8flower.baselines.features`): per chosen layer, the squared L2 norm
   of each channel, L1-normalised within the layer; the layers concatenated and L2-normalised.
2. **Relevant features** (:mod:`an8flower.baselines.lasso`): one-vs-all per class j on the
   training set, ``w_j = argmin ||X w - l_j||^2 s.t. ||w||_1 <= mu, w >= 0`` (X the N x m feature
   matrix, l_j the one-hot column of class j). The relevant features of class j are the non-zero
   entries of w_j. The labels are the ground truth (default) or the model's predictions.
3. **Explanation** of class c for an image with feature vector x: contributions
   ``r = x * w_c / sum(w_c)``; the top ``k`` features with r > 0. Each is visualised by keeping
   that channel's own forward activation at its layer (all other channels and layers zero) and
   propagating it to the input with the guided-backprop ReLU rule, max-pooling through the forward
   switches and convolutions transposed (:func:`an8flower.baselines.rules.backward_rules`, the
   rule guided backprop uses too). Each input-space map is rectified, reduced to one channel by the
   per-pixel L2 norm over colour channels, and min-max normalised to [0, 1] (a constant map gives
   zeros). The heatmap is the pixel-wise maximum of the k maps.
4. **Stride fix**: strided convolutions back-propagate by nearest-neighbour upsampling and a
   stride-1 transpose, which removes the checkerboard a strided transpose leaves (on by default).
5. **Interpretation**: per class its relevant features with their weights, and an average
   visualisation of each: the mean of that feature's input-space visualisations over the training
   images in which it responds most (the ``top_n`` largest feature values, default 10; images with
   a zero value for the feature never count).

``targets`` in the explainer protocol is the class c to explain; ``None`` (the protocol's
default) means the predicted class, which is what the paper explains. Images with fewer than k
positive contributions use those they have; an image with none (e.g. a class without relevant
features) gets an all-zero heatmap; :meth:`VEBI.explain_features` reports how many were used.

The paper used ``mu = 5`` on an8Flower and ``mu = 10`` elsewhere; the default here is 10.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from an8flower.baselines.base import (
    Explainer,
    check_inputs,
    eval_mode,
    model_device,
    reduce_channels,
)
from an8flower.baselines.features import LAYER_PRESETS, LayerRecorder, channel_energy, default_layers, feature_vector
from an8flower.baselines.lasso import nonneg_l1_lasso
from an8flower.baselines.registry import register_explainer
from an8flower.baselines.rules import RELU_RULES, backward_rules
from an8flower.errors import UsageError

__all__ = ["VEBI", "RelevantFeature", "FeatureMaps", "minmax_normalise", "postprocess_signal"]

_FORMAT = "an8flower-vebi"
_FORMAT_VERSION = 1
LABEL_SOURCES = ("ground_truth", "predicted")


@dataclass
class RelevantFeature:
    """One relevant feature of a class.

    Attributes:
        name: ``"<layer>:<channel>"``.
        layer: module path of the layer.
        channel: channel (or linear unit) index in that layer.
        index: position in the concatenated feature vector.
        weight: its lasso weight w_j for the class.
        average_map: (H, W) mean of its post-processed heatmaps over its top training images, or
            None before :meth:`VEBI.interpret`.
        average_image: (3, H, W) mean of its rectified input-space signals, each scaled by its
            maximum to [0, 1] (the colour visualisation the paper shows), or None.
        n_images: how many training images were averaged (<= top_n).
    """

    name: str
    layer: str
    channel: int
    index: int
    weight: float
    average_map: torch.Tensor | None = None
    average_image: torch.Tensor | None = None
    n_images: int = 0


@dataclass
class FeatureMaps:
    """What :meth:`VEBI.explain_features` returns for a batch of B images.

    Attributes:
        heatmaps: (B, H, W) the explanation, the pixel-wise max of ``maps``.
        maps: (B, k, H, W) the per-feature maps in [0, 1], zeros where a rank has no feature.
        features: (B, k) feature-vector indices of the top features, -1 where none.
        contributions: (B, k) their contributions ``x * w_c / sum(w_c)`` (0 where none).
        n_features: (B,) how many positive-contribution features each image has (<= k).
        targets: (B,) the explained classes.
    """

    heatmaps: torch.Tensor
    maps: torch.Tensor
    features: torch.Tensor
    contributions: torch.Tensor
    n_features: torch.Tensor
    targets: torch.Tensor
    names: list[list[str]] = field(default_factory=list)


def refuse_transformers(model: nn.Module) -> None:
    """UsageError for a model with attention blocks: VEBI is not defined on Vision Transformers.

    Its features are the energies of convolutional channels over spatial positions, and its visual
    feedback back-propagates a feature through ReLUs (guided or deconvnet rule) with the stride fix
    of strided convolutions. A ViT's token features mix all positions through attention, its
    non-linearities are GELUs and its one strided convolution (the patch embedding) has stride =
    kernel; a generalisation to token features is a different method, not offered.
    """
    from an8flower.baselines.vit import is_transformer

    if is_transformer(model):
        raise UsageError(f"vebi does not apply to {type(model).__name__}, a transformer: its features are convolutional "
                         "channel energies and its feedback needs ReLUs and the stride fix (see VEBI.fit)")


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each map of (..., H, W) to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)


def postprocess_signal(signal: torch.Tensor) -> torch.Tensor:
    """VEBI's post-processing of input-space signals (B, C, H, W) -> (B, H, W) in [0, 1].

    Rectify, per-pixel L2 norm over colour channels (the ``pos_l2`` reduction), min-max per map.
    """
    return minmax_normalise(reduce_channels(signal, "pos_l2"))


def _batches(loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise UsageError(f"loader batch {i} must be (images, labels[, masks]), got {type(batch).__name__}")
        images, labels = batch[0], batch[1]
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise UsageError(f"loader batch {i}: images must be a (B, C, H, W) tensor")
        yield images, torch.as_tensor(labels)


@register_explainer("vebi")
class VEBI(Explainer):
    """Visual Explanation by Interpretation (Oramas et al., ICLR 2019). See the module docstring.

    Args:
        mu: L1 radius of the lasso (default 10 as in the authors' code; they used 5 on an8Flower).
        k: number of top relevant features whose maps make the heatmap (paper: 3).
        layers: module paths of the layers giving features; None = :func:`default_layers` at fit time;
            a name of :data:`~an8flower.baselines.features.LAYER_PRESETS` = that layer set at fit
            time (``"released"``: every layer output, convolutions included, as the authors' code;
            ``"rectified"``: the default). A module whose path is a preset's name is given in a list.
        labels: ``"ground_truth"`` (the paper) or ``"predicted"`` (the model's predictions) as the
            lasso's targets.
        stride_fix: use the stride fix when back-propagating through strided convolutions.
        relu: ReLU backward rule: ``"guided"`` (the paper), ``"deconvnet"`` or ``"gradient"``.
        top_n: training images averaged per feature in :meth:`interpret`.
        lasso_tol: relative duality-gap tolerance of the lasso (see :mod:`~an8flower.baselines.lasso`).
        max_iter: iteration cap of the lasso.
        batch_size: batch size of the visualisation passes in :meth:`interpret`.
    """

    requires_fit = True
    reduction = "pos_l2"

    def __init__(
        self,
        mu: float = 10.0,
        k: int = 3,
        layers: Sequence[str] | str | None = None,
        labels: str = "ground_truth",
        stride_fix: bool = True,
        relu: str = "guided",
        top_n: int = 10,
        lasso_tol: float = 1e-6,
        max_iter: int = 20000,
        batch_size: int = 32,
    ) -> None:
        if not (float(mu) > 0):
            raise UsageError(f"mu must be > 0, got {mu}")
        if int(k) < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        if labels not in LABEL_SOURCES:
            raise UsageError(f"labels must be one of {', '.join(LABEL_SOURCES)}, got {labels!r}")
        if relu not in RELU_RULES:
            raise UsageError(f"relu must be one of {', '.join(RELU_RULES)}, got {relu!r}")
        if int(top_n) < 1:
            raise UsageError(f"top_n must be >= 1, got {top_n}")
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(layers, str) and layers not in LAYER_PRESETS:
            layers = [layers]
        self.mu = float(mu)
        self.k = int(k)
        self.layers: list[str] | str | None = layers if layers is None or isinstance(layers, str) else list(layers)
        self.labels = labels
        self.stride_fix = bool(stride_fix)
        self.relu = relu
        self.top_n = int(top_n)
        self.lasso_tol = float(lasso_tol)
        self.max_iter = int(max_iter)
        self.batch_size = int(batch_size)
        # Fitted state.
        self.layers_: list[str] | None = None
        self.layer_sizes_: list[int] | None = None
        self.weights_: torch.Tensor | None = None  # (m, K) float32 on the CPU
        self.fit_info_: dict[str, Any] = {}
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def options(self) -> dict[str, Any]:
        return {
            "mu": self.mu,
            "k": self.k,
            "layers": self.layers,
            "labels": self.labels,
            "stride_fix": self.stride_fix,
            "relu": self.relu,
            "top_n": self.top_n,
            "lasso_tol": self.lasso_tol,
            "max_iter": self.max_iter,
        }

    # ----------------------------------------------------------------------------------- state
    @property
    def is_fitted(self) -> bool:
        return self.weights_ is not None

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise UsageError("the vebi explainer is not fitted: call fit(model, loader) or load(path) first")

    def set_weights(self, layers: Sequence[str], layer_sizes: Sequence[int], weights: torch.Tensor) -> VEBI:
        """Set the fitted state directly: ``weights`` (m, K) over the features of ``layers``.

        ``layer_sizes[i]`` is the number of channels of ``layers[i]``; m = sum(layer_sizes). Weights
        must be finite and non-negative. Used by :meth:`fit` and :meth:`load`.
        """
        layers = list(layers)
        sizes = [int(s) for s in layer_sizes]
        weights = torch.as_tensor(weights).detach().to("cpu", torch.float32)
        if len(layers) != len(sizes) or not layers:
            raise UsageError(f"need one size per layer, got {len(layers)} layers and {len(sizes)} sizes")
        if weights.dim() != 2 or weights.shape[0] != sum(sizes):
            raise UsageError(f"weights must have shape ({sum(sizes)}, K), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise UsageError("weights must be finite and non-negative")
        self.layers_, self.layer_sizes_, self.weights_ = layers, sizes, weights
        self._device_cache = {}
        return self

    @property
    def num_classes(self) -> int:
        self._require_fit()
        assert self.weights_ is not None
        return int(self.weights_.shape[1])

    @property
    def feature_names(self) -> list[str]:
        """``"<layer>:<channel>"`` for every entry of the feature vector."""
        self._require_fit()
        assert self.layers_ is not None and self.layer_sizes_ is not None
        return [f"{name}:{c}" for name, size in zip(self.layers_, self.layer_sizes_, strict=True) for c in range(size)]

    def _feature_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights (m, K), layer index (m,), channel index (m,)) on ``device``, cached."""
        if device not in self._device_cache:
            assert self.weights_ is not None and self.layer_sizes_ is not None
            sizes = torch.tensor(self.layer_sizes_)
            layer_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
            starts = torch.cumsum(sizes, 0) - sizes
            channel_of = torch.arange(int(sizes.sum())) - starts[layer_of]
            self._device_cache[device] = (self.weights_.to(device), layer_of.to(device), channel_of.to(device))
        return self._device_cache[device]

    def relevant_features(self, cls: int) -> list[RelevantFeature]:
        """The relevant features of class ``cls`` (non-zero weights), largest weight first."""
        self._require_fit()
        assert self.weights_ is not None and self.layers_ is not None
        if not 0 <= int(cls) < self.num_classes:
            raise UsageError(f"class {cls} is out of range for {self.num_classes} classes")
        w = self.weights_[:, int(cls)]
        nz = torch.nonzero(w > 0).flatten()
        order = nz[torch.argsort(w[nz], descending=True, stable=True)]
        _, layer_of, channel_of = self._feature_tables(torch.device("cpu"))
        return [
            RelevantFeature(
                name=f"{self.layers_[int(layer_of[i])]}:{int(channel_of[i])}",
                layer=self.layers_[int(layer_of[i])],
                channel=int(channel_of[i]),
                index=int(i),
                weight=float(w[i]),
            )
            for i in order
        ]

    # ------------------------------------------------------------------------------- features
    def _check_layer_sizes(self, energies: Sequence[torch.Tensor]) -> None:
        assert self.layers_ is not None and self.layer_sizes_ is not None
        for name, size, e in zip(self.layers_, self.layer_sizes_, energies, strict=True):
            if e.shape[1] != size:
                raise UsageError(
                    f"layer {name!r} has {e.shape[1]} channels in this model but {size} when vebi was fitted"
                )

    def _energies(self, model: nn.Module, images: torch.Tensor, layers: Sequence[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per-layer channel energies [(B, C_l)], logits (B, K)) in one no-grad forward pass."""
        with torch.no_grad(), LayerRecorder(model, layers, reduce=channel_energy) as rec:
            logits = model(images)
            energies = rec.collect()
        return energies, logits

    def _features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Feature vectors (B, m) of a fitted explainer's layers."""
        assert self.layers_ is not None
        energies, _ = self._energies(model, images, self.layers_)
        self._check_layer_sizes(energies)
        return feature_vector(energies)

    def fit(self, model: nn.Module, loader: Iterable[Any], progress: bool | None = None) -> VEBI:
        """Select each class's relevant features on the training data of ``loader``.

        Args:
            model: the trained classifier (put in eval mode for the pass, its mode restored after).
            loader: iterable of ``(images, labels[, masks])`` batches (a ``DataLoader``); images go to
                the model's device. The N x m feature matrix is kept on that device for the lasso.
            progress: show a tqdm bar (None: only on a terminal).

        Returns:
            ``self``, fitted; ``fit_info_`` holds the lasso diagnostics (iterations, max relative
            gap, convergence, number of relevant features per class).

        Raises:
            UsageError: ``model`` is a transformer (see :func:`refuse_transformers`).
        """
        from tqdm.auto import tqdm

        refuse_transformers(model)

        device = model_device(model)
        feats: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        n_classes: int | None = None
        preset = self.layers if isinstance(self.layers, str) else "rectified"
        layers: list[str] | None = list(self.layers) if self.layers is not None and not isinstance(self.layers, str) else None
        sizes: list[int] | None = None
        disable = None if progress is None else not progress
        with eval_mode(model):
            for images, labels in tqdm(_batches(loader), desc="vebi: features", unit="batch", disable=disable):
                images = images.to(device)
                if layers is None:
                    layers = default_layers(model, images, preset)
                    if not layers:
                        raise UsageError(
                            f"{type(model).__name__} has no conv, ReLU, pooling or linear layers to take features from"
                        )
                energies, logits = self._energies(model, images, layers)
                if sizes is None:
                    sizes = [int(e.shape[1]) for e in energies]
                n_classes = logits.shape[1]
                y = logits.argmax(dim=1) if self.labels == "predicted" else labels.to(device).long().view(-1)
                if y.shape[0] != images.shape[0]:
                    raise UsageError(f"loader gave {y.shape[0]} labels for {images.shape[0]} images")
                feats.append(feature_vector(energies))
                targets.append(y)
        if not feats or n_classes is None:
            raise UsageError("the loader gave no batches to fit vebi on")
        x_all = torch.cat(feats)
        y_all = torch.cat(targets)
        bad = ((y_all < 0) | (y_all >= n_classes)).nonzero()
        if bad.numel():
            raise UsageError(f"label {int(y_all[bad[0, 0]])} is out of range for a model with {n_classes} classes")
        onehot = torch.nn.functional.one_hot(y_all, n_classes).to(x_all.dtype)
        result = nonneg_l1_lasso(x_all, onehot, self.mu, tol=self.lasso_tol, max_iter=self.max_iter)
        if not result.converged:
            warnings.warn(
                f"vebi: the lasso stopped after {result.iterations} iterations without reaching tol={self.lasso_tol}",
                RuntimeWarning,
                stacklevel=2,
            )
        assert layers is not None and sizes is not None
        self.set_weights(layers, sizes, result.weights)
        rel_gap = result.gap / onehot.sum(0).double().to(result.gap.device).clamp(min=1e-12)
        self.fit_info_ = {
            "n_train": int(x_all.shape[0]),
            "n_features": int(x_all.shape[1]),
            "lasso_iterations": result.iterations,
            "lasso_converged": result.converged,
            "lasso_max_relative_gap": float(rel_gap.max()),
            "lipschitz": result.lipschitz,
            "relevant_per_class": [int(c) for c in (result.weights > 0).sum(0).tolist()],
        }
        return self

    # ---------------------------------------------------------------------------- explanation
    def _backprop(
        self,
        x: torch.Tensor,
        acts: Sequence[torch.Tensor],
        feature: torch.Tensor,
        valid: torch.Tensor,
        retain_graph: bool,
    ) -> torch.Tensor:
        """Input-space signals (B, C, H, W): per image, its ``feature``'s channel activation sent back.

        ``acts`` are the layer outputs of a forward pass of ``x`` run inside ``backward_rules``;
        image b's seed is its own activation of channel ``channel_of[feature[b]]`` at layer
        ``layer_of[feature[b]]`` (zero elsewhere); images with ``valid[b]`` False get zeros. Images
        are independent (eval mode), so one backward pass serves the whole batch.
        """
        _, layer_of, channel_of = self._feature_tables(x.device)
        lay = layer_of[feature.clamp(min=0)]
        chan = channel_of[feature.clamp(min=0)]
        involved = torch.unique(lay[valid]).tolist()
        if not involved:
            return torch.zeros_like(x)
        outputs, seeds = [], []
        for li in involved:
            act = acts[li]
            rows = torch.nonzero(valid & (lay == li)).flatten()
            seed = torch.zeros_like(act)  # only the selected channel of the selected images is copied
            seed[rows, chan[rows]] = act.detach()[rows, chan[rows]]
            outputs.append(act)
            seeds.append(seed)
        grads = torch.autograd.grad(outputs, x, seeds, retain_graph=retain_graph, allow_unused=True)
        return grads[0] if grads[0] is not None else torch.zeros_like(x)

    def _explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> FeatureMaps:
        self._require_fit()
        assert self.layers_ is not None
        weights, _, _ = self._feature_tables(images.device)
        if weights.shape[1] <= int(targets.max()):
            raise UsageError(
                f"target {int(targets.max())} is out of range for vebi fitted on {weights.shape[1]} classes"
            )
        x = images.detach().requires_grad_(True)
        b, _, h, w = images.shape
        k = min(self.k, weights.shape[0])
        maps = torch.zeros(b, self.k, h, w, device=images.device)
        with torch.enable_grad(), backward_rules(model, self.relu, self.stride_fix), LayerRecorder(model, self.layers_) as rec:
            model(x)
            acts = rec.collect()
            energies = [channel_energy(a.detach()) for a in acts]
            self._check_layer_sizes(energies)
            feats = feature_vector(energies)
            wc = weights[:, targets].T  # (B, m)
            total = wc.sum(dim=1, keepdim=True)
            contrib = torch.where(total > 0, feats * wc / total.clamp(min=torch.finfo(wc.dtype).tiny), torch.zeros_like(feats))
            values, index = contrib.topk(k, dim=1)
            valid = values > 0
            for r in range(k):
                if not bool(valid[:, r].any()):
                    break
                signal = self._backprop(x, acts, index[:, r], valid[:, r], retain_graph=r < k - 1)
                maps[:, r] = postprocess_signal(signal) * valid[:, r, None, None]
        features = torch.full((b, self.k), -1, dtype=torch.long, device=images.device)
        features[:, :k] = torch.where(valid, index, torch.full_like(index, -1))
        contributions = torch.zeros(b, self.k, device=images.device)
        contributions[:, :k] = torch.where(valid, values, torch.zeros_like(values)).float()
        names = self.feature_names
        return FeatureMaps(
            heatmaps=maps.amax(dim=1),
            maps=maps,
            features=features,
            contributions=contributions,
            n_features=valid.sum(dim=1),
            targets=targets,
            names=[[names[i] for i in row if i >= 0] for row in features.tolist()],
        )

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Heatmaps (B, H, W): the pixel-wise max of the k feature maps for class ``targets``."""
        return self._explain(model, images, targets).heatmaps

    def explain_features(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | list[int] | None = None
    ) -> FeatureMaps:
        """Like calling the explainer, but returns the k per-feature maps and which features they are.

        Args:
            model, images, targets: as in the explainer protocol (``targets=None``: predicted class).

        Returns:
            :class:`FeatureMaps`, all tensors detached on the model's device.
        """
        with eval_mode(model):
            images, checked_targets = check_inputs(model, images, targets)
            out = self._explain(model, images, checked_targets)
        for name in ("heatmaps", "maps", "contributions"):
            setattr(out, name, getattr(out, name).detach())
        return out

    # --------------------------------------------------------------------------- interpretation
    def interpret(
        self, model: nn.Module, loader: Iterable[Any], progress: bool | None = None
    ) -> dict[int, list[RelevantFeature]]:
        """Relevant features of every class with their average visualisations.

        One pass over ``loader`` keeps, for every relevant feature, the ``top_n`` images with the
        largest feature value (ties: the earlier image; images with a zero value are skipped); then
        each feature is visualised on its images as in the explanation (its own activation sent back
        with the ReLU rule and the stride fix) and the visualisations are averaged. Only the images in
        some feature's current top list are kept in memory (on the CPU).

        Args:
            model: the classifier VEBI was fitted on.
            loader: ``(images, labels[, masks])`` batches, all images of one size.
            progress: show tqdm bars (None: only on a terminal).

        Returns:
            ``{class: [RelevantFeature, ...]}`` largest weight first, with ``average_map``,
            ``average_image`` and ``n_images`` filled in (None and 0 for a feature no image activates).
        """
        from tqdm.auto import tqdm

        self._require_fit()
        assert self.weights_ is not None
        device = model_device(model)
        relevant = torch.nonzero((self.weights_ > 0).any(dim=1)).flatten()
        per_class = {c: self.relevant_features(c) for c in range(self.num_classes)}
        if relevant.numel() == 0:
            return per_class
        n_rel, top_n = relevant.numel(), self.top_n
        rel_dev = relevant.to(device)
        best_val = torch.full((n_rel, top_n), float("-inf"))
        best_idx = torch.full((n_rel, top_n), -1, dtype=torch.long)
        store: dict[int, torch.Tensor] = {}
        offset = 0
        shape: tuple[int, ...] | None = None
        disable = None if progress is None else not progress
        with eval_mode(model):
            for images, _ in tqdm(_batches(loader), desc="vebi: top images", unit="batch", disable=disable):
                if shape is None:
                    shape = tuple(images.shape[1:])
                elif tuple(images.shape[1:]) != shape:
                    raise UsageError(f"interpret needs images of one size; got {tuple(images.shape[1:])} after {shape}")
                feats = self._features(model, images.to(device))
                vals = feats[:, rel_dev].T.float().cpu()  # (n_rel, B)
                vals = torch.where(vals > 0, vals, torch.full_like(vals, float("-inf")))
                idx = torch.arange(offset, offset + images.shape[0]).expand(n_rel, -1)
                cand_val = torch.cat([best_val, vals], dim=1)
                cand_idx = torch.cat([best_idx, idx], dim=1)
                order = torch.sort(cand_val, dim=1, descending=True, stable=True).indices[:, :top_n]
                best_val, best_idx = cand_val.gather(1, order), cand_idx.gather(1, order)
                best_idx = torch.where(torch.isfinite(best_val), best_idx, torch.full_like(best_idx, -1))
                needed = set(best_idx[best_idx >= 0].tolist())
                for i in needed:
                    if i >= offset and i not in store:
                        store[i] = images[i - offset].detach().cpu()
                for i in [i for i in store if i not in needed]:
                    del store[i]
                offset += images.shape[0]
            pairs = torch.nonzero(best_idx >= 0)  # (P, 2): (relevant row, slot)
            map_sum = torch.zeros(n_rel, *(shape[1:] if shape else ()))
            image_sum = torch.zeros(n_rel, *(shape or ()))
            count = torch.zeros(n_rel, dtype=torch.long)
            for start in tqdm(range(0, pairs.shape[0], self.batch_size), desc="vebi: visualisations", unit="batch", disable=disable):
                chunk = pairs[start : start + self.batch_size]
                images = torch.stack([store[int(best_idx[r, s])] for r, s in chunk.tolist()]).to(device)
                feature = rel_dev[chunk[:, 0].to(device)]
                signal = self._visualise(model, images, feature)
                hmap = postprocess_signal(signal).float().cpu()
                pos = signal.clamp(min=0).float()
                peak = pos.flatten(1).amax(dim=1).clamp(min=torch.finfo(pos.dtype).tiny)
                colour = (pos / peak.view(-1, 1, 1, 1)).cpu()
                map_sum.index_add_(0, chunk[:, 0], hmap)
                image_sum.index_add_(0, chunk[:, 0], colour)
                count.index_add_(0, chunk[:, 0], torch.ones(chunk.shape[0], dtype=torch.long))
        row_of = {int(f): r for r, f in enumerate(relevant.tolist())}
        for feats_c in per_class.values():
            for rf in feats_c:
                r = row_of[rf.index]
                n = int(count[r])
                rf.n_images = n
                if n:
                    rf.average_map = map_sum[r] / n
                    rf.average_image = image_sum[r] / n
        return per_class

    def _visualise(self, model: nn.Module, images: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Input-space signal of feature ``feature[b]`` on image b, (B, C, H, W)."""
        assert self.layers_ is not None
        x = images.detach().requires_grad_(True)
        with torch.enable_grad(), backward_rules(model, self.relu, self.stride_fix), LayerRecorder(model, self.layers_) as rec:
            model(x)
            acts = rec.collect()
            valid = torch.ones_like(feature, dtype=torch.bool)
            return self._backprop(x, acts, feature, valid, retain_graph=False).detach()

    # ------------------------------------------------------------------------------ save/load
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted state to ``path`` (NumPy ``.npz``, no pickle), atomically.

        Holds ``weights`` (m, K) float32, ``layer_sizes`` (L,) int64 and ``meta``, a JSON string with
        the format tag, the layer names, the fit-time options (mu, labels, lasso_tol, max_iter,
        layers) and ``fit_info_``.
        """
        self._require_fit()
        assert self.weights_ is not None and self.layers_ is not None and self.layer_sizes_ is not None
        path = os.fspath(path)
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "layers": self.layers_,
            "fit_options": {
                "mu": self.mu,
                "labels": self.labels,
                "lasso_tol": self.lasso_tol,
                "max_iter": self.max_iter,
                "layers": self.layers,
            },
            "fit_info": self.fit_info_,
        }
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise UsageError(f"cannot save vebi to {path}: folder {directory} does not exist")
        from an8flower.atomic import atomic_writer

        with atomic_writer(path) as fh:
            np.savez(
                fh,
                weights=self.weights_.numpy(),
                layer_sizes=np.asarray(self.layer_sizes_, dtype=np.int64),
                meta=np.asarray(json.dumps(meta, sort_keys=True)),
            )

    def load(self, path: str | os.PathLike[str]) -> VEBI:
        """Read a state written by :meth:`save`; returns ``self``.

        The weights, layers and fit-time options (mu, labels, lasso_tol, max_iter, layers) come from
        the file; the explanation options (k, relu, stride_fix, top_n) stay those of this instance.

        Raises:
            UsageError: a missing or unreadable file, or one that is not a vebi state (names the file).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UsageError(f"vebi state file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = torch.from_numpy(np.array(data["weights"], dtype=np.float32))
                sizes = [int(s) for s in data["layer_sizes"]]
                meta = json.loads(str(data["meta"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
            raise UsageError(f"cannot read vebi state file {path}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise UsageError(f"{path} is not a vebi state file (format tag {meta.get('format') if isinstance(meta, dict) else None!r})")
        if int(meta.get("version", 0)) > _FORMAT_VERSION:
            raise UsageError(f"{path} has vebi format version {meta['version']}; this version reads up to {_FORMAT_VERSION}")
        opts = meta.get("fit_options", {})
        try:
            self.set_weights(meta["layers"], sizes, weights)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        self.mu = float(opts.get("mu", self.mu))
        self.labels = opts.get("labels", self.labels)
        self.lasso_tol = float(opts.get("lasso_tol", self.lasso_tol))
        self.max_iter = int(opts.get("max_iter", self.max_iter))
        self.layers = opts.get("layers", self.layers)
        self.fit_info_ = dict(meta.get("fit_info", {}))
        return self
