"""Feature removal: does an interpretation find the features the model needs?

VEBI (Oramas et al., ICLR 2019) names, for each class ``j``, its *relevant features*: channels
``c`` of layers ``l`` (:meth:`an8flower.baselines.VEBI.relevant_features`). If they are what the
network uses to recognise class ``j``, switching them off should hurt class ``j`` much more than
switching off as many other channels. For each class ``j`` with ``n_j`` relevant channels
(``n_{j,l}`` of them at layer ``l``), three removals are compared, each zeroing channels of the
layers' outputs with forward hooks (inside a :class:`~an8flower.baselines.base.HookScope`, removed
on exit):

* ``relevant``: class ``j``'s relevant channels;
* ``random``: ``n_{j,l}`` channels of each layer ``l`` drawn uniformly without replacement among
  all its channels (relevant ones included: this is the chance level), over ``draws`` seeded draws
  (``numpy.random.SeedSequence((seed, j, draw))``), the results averaged;
* ``most_active``: the ``n_{j,l}`` channels of each layer ``l`` with the largest mean activation
  energy ``mean_i sum_{h,w} A_l(x_i)[c, h, w]^2`` over the training images ``x_i`` of class ``j``
  (a strong, interpretation-free baseline; ``overlap`` is the share of them that are relevant).

Each removal is scored on every image of the test split (correctly classified or not):

* ``accuracy``: class ``j``'s accuracy on its images, ties of the top logit counted fractionally
  (an image whose true class shares the maximum with ``t - 1`` others counts ``1 / t``), so that a
  network left without evidence (all logits equal) scores chance, ``1 / K``;
* ``probability``: the mean softmax probability of class ``j`` on its images;
* ``others``: the mean accuracy of the other classes on their images (a removal specific to
  class ``j`` leaves it unchanged).

The drops are the intact model's value minus the value after removal (positive = worse).
:func:`summarise` gives, per removal, the mean drop over classes with its 95% Student-t
confidence interval (classes without relevant features are left out and listed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from an8flower.baselines.base import HookScope, eval_mode, model_device
from an8flower.baselines.features import channel_energy, resolve_layers
from an8flower.errors import UsageError
from an8flower.eval.stats import mean_ci

__all__ = [
    "CONDITIONS",
    "zeroed_channels",
    "class_performance",
    "relevant_channels",
    "random_channels",
    "most_active_channels",
    "feature_removal",
    "summarise",
]

#: The removals compared, in table order.
CONDITIONS: tuple[str, ...] = ("relevant", "random", "most_active")

Channels = Mapping[str, Sequence[int]]


@contextmanager
def zeroed_channels(model: nn.Module, channels: Channels) -> Iterator[None]:
    """Inside the block, channels ``channels[layer]`` of each named layer's output are zero.

    Args:
        model: the network. channels: module path -> channel (or linear unit) indices.

    Raises:
        UsageError: an unknown layer, or a channel index out of range for its layer's output.
    """
    names = [n for n, c in channels.items() if len(c)]
    modules = resolve_layers(model, names)

    def hook_for(name: str, index: torch.Tensor):
        def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                raise UsageError(f"layer {name!r} does not return a (B, C, ...) tensor")
            if int(index.max()) >= output.shape[1]:
                raise UsageError(f"layer {name!r} has {output.shape[1]} channels; channel {int(index.max())} does not exist")
            keep = torch.ones(output.shape[1], dtype=output.dtype, device=output.device)
            keep[index.to(output.device)] = 0
            return output * keep.view(1, -1, *([1] * (output.dim() - 2)))

        return hook

    with HookScope() as scope:
        for name, module in zip(names, modules, strict=True):
            scope.add(module.register_forward_hook(hook_for(name, torch.as_tensor(list(channels[name]), dtype=torch.long))))
        yield


def _batches(split: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(split)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        yield split.float_images(idx), split.labels[idx]


def class_performance(model: nn.Module, split: Any, num_classes: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-class accuracy (ties fractional) and mean true-class probability on ``split``.

    Args:
        model: the classifier (run in eval mode, no gradients). split: a
            :class:`~an8flower.eval.data.TensorSplit` (``float_images``, ``labels``).
        num_classes: K.

    Returns:
        ``{"accuracy": (K,), "probability": (K,), "count": (K,)}`` float64 / int64; NaN for a
        class without images.
    """
    device = model_device(model)
    correct = torch.zeros(num_classes, dtype=torch.float64)
    prob = torch.zeros(num_classes, dtype=torch.float64)
    count = torch.zeros(num_classes, dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        for images, labels in _batches(split, batch_size):
            logits = model(images.to(device)).double().cpu()
            top = logits.max(dim=1, keepdim=True).values
            ties = (logits == top).sum(1).double()
            hit = (logits.gather(1, labels.view(-1, 1)).squeeze(1) == top.squeeze(1)).double() / ties
            p = torch.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
            correct.index_add_(0, labels, hit)
            prob.index_add_(0, labels, p)
            count.index_add_(0, labels, torch.ones_like(p))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = count.numpy()
        return {"accuracy": np.where(c > 0, correct.numpy() / np.maximum(c, 1), np.nan),
                "probability": np.where(c > 0, prob.numpy() / np.maximum(c, 1), np.nan),
                "count": c.astype(np.int64)}


def relevant_channels(vebi: Any) -> dict[int, dict[str, list[int]]]:
    """Class -> {layer: [channels]} of a fitted VEBI's relevant features (largest weight first)."""
    out: dict[int, dict[str, list[int]]] = {}
    for c in range(vebi.num_classes):
        per: dict[str, list[int]] = {}
        for f in vebi.relevant_features(c):
            per.setdefault(f.layer, []).append(int(f.channel))
        out[c] = per
    return out


def random_channels(counts: Mapping[str, int], sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, list[int]]:
    """``counts[layer]`` channels of each layer drawn uniformly without replacement among its ``sizes[layer]``."""
    return {layer: sorted(int(c) for c in rng.choice(int(sizes[layer]), size=int(n), replace=False))
            for layer, n in counts.items() if n}


def most_active_channels(model: nn.Module, split: Any, counts: Mapping[int, Mapping[str, int]],
                         batch_size: int = 64) -> dict[int, dict[str, list[int]]]:
    """Per class, the ``counts[class][layer]`` channels of each layer with the largest mean energy on its images.

    The energy of channel c of layer l on image x is ``sum_{h,w} A_l(x)[c, h, w]^2``
    (:func:`~an8flower.baselines.features.channel_energy`), averaged over the images of ``split``
    of that class (ties: the lower channel index first).
    """
    layers = sorted({layer for per in counts.values() for layer, n in per.items() if n})
    if not layers:
        return {c: {} for c in counts}
    from an8flower.baselines.features import LayerRecorder

    device = model_device(model)
    sums: dict[str, torch.Tensor] = {}
    n_per = torch.zeros(int(split.labels.max()) + 1 if len(split) else 0, dtype=torch.float64)
    with eval_mode(model), torch.no_grad(), LayerRecorder(model, layers, reduce=channel_energy) as rec:
        for images, labels in _batches(split, batch_size):
            model(images.to(device))
            for layer, e in zip(layers, rec.collect(), strict=True):
                e = e.double().cpu()
                acc = sums.setdefault(layer, torch.zeros(n_per.shape[0], e.shape[1], dtype=torch.float64))
                acc.index_add_(0, labels, e)
            n_per.index_add_(0, labels, torch.ones(labels.shape[0], dtype=torch.float64))
    out: dict[int, dict[str, list[int]]] = {}
    for c, per in counts.items():
        chosen: dict[str, list[int]] = {}
        for layer, n in per.items():
            if not n:
                continue
            mean = sums[layer][c] / max(float(n_per[c]), 1.0) if c < n_per.shape[0] else torch.zeros(sums[layer].shape[1])
            order = sorted(range(mean.shape[0]), key=lambda i: (-float(mean[i]), i))
            chosen[layer] = sorted(order[: int(n)])
        out[c] = chosen
    return out


def _others(perf: Mapping[str, np.ndarray], c: int) -> float:
    """Mean accuracy of the classes other than ``c`` that have images."""
    others = [i for i in range(len(perf["accuracy"])) if i != c and perf["count"][i] > 0]
    return float(np.mean(perf["accuracy"][others])) if others else math.nan


def _drops(base: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], c: int) -> dict[str, float]:
    o0, o1 = _others(base, c), _others(after, c)
    return {"accuracy": float(after["accuracy"][c]), "probability": float(after["probability"][c]), "others": o1,
            "accuracy_drop": float(base["accuracy"][c] - after["accuracy"][c]),
            "probability_drop": float(base["probability"][c] - after["probability"][c]),
            "others_drop": o0 - o1}


def feature_removal(model: nn.Module, relevant: Mapping[int, Channels], test: Any, layer_sizes: Mapping[str, int],
                    train: Any | None = None, draws: int = 5, seed: int = 0, batch_size: int = 64,
                    progress: bool | None = None) -> dict[str, Any]:
    """Remove each class's relevant channels, as many random ones, as many most active ones; score each.

    Args:
        model: the classifier. relevant: class -> {layer: [channels]} (:func:`relevant_channels`).
        test: the split scored (a TensorSplit). layer_sizes: layer -> its number of channels (the
            random draws' range). train: the split whose class images define ``most_active``
            (None: that removal is skipped). draws: random draws per class (>= 1). seed: their seed.
        batch_size: images per forward pass. progress: a tqdm bar (None: on a terminal only).

    Returns:
        ``{"classes": [per class: {"class", "n_channels", "layers": {layer: n}, "intact":
        {"accuracy", "probability", "others"}, "relevant" / "random" / "most_active": {values after
        removal and their "*_drop"}, "overlap"}], "skipped": [classes without relevant features],
        "summary": summarise(...), "draws", "seed", "n_test"}``.

    Raises:
        UsageError: ``draws < 1``, a class out of range, a layer of ``relevant`` missing from
        ``layer_sizes``.
    """
    from tqdm.auto import tqdm

    if int(draws) < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")
    num_classes = int(max(int(test.labels.max()) + 1, max(relevant, default=-1) + 1))
    for c, per in relevant.items():
        if not 0 <= int(c) < num_classes:
            raise UsageError(f"class {c} is out of range")
        for layer in per:
            if layer not in layer_sizes:
                raise UsageError(f"layer {layer!r} has no size in layer_sizes")
    intact = class_performance(model, test, num_classes, batch_size)
    counts = {int(c): {layer: len(ch) for layer, ch in per.items()} for c, per in relevant.items()}
    active = most_active_channels(model, train, counts, batch_size) if train is not None else None
    rows, skipped = [], []
    classes = sorted(int(c) for c in relevant)
    for c in tqdm(classes, desc="feature removal", unit="class", disable=None if progress is None else not progress):
        per = {layer: list(ch) for layer, ch in relevant[c].items() if len(ch)}
        n = sum(len(ch) for ch in per.values())
        if n == 0 or intact["count"][c] == 0:
            skipped.append(c)
            continue
        row: dict[str, Any] = {"class": c, "n_channels": n, "layers": {k: len(v) for k, v in per.items()},
                               "intact": {"accuracy": float(intact["accuracy"][c]),
                                          "probability": float(intact["probability"][c]), "others": _others(intact, c)}}
        with zeroed_channels(model, per):
            row["relevant"] = _drops(intact, class_performance(model, test, num_classes, batch_size), c)
        draws_out = []
        for d in range(int(draws)):
            rng = np.random.default_rng(np.random.SeedSequence((int(seed), c, d)))
            with zeroed_channels(model, random_channels(counts[c], layer_sizes, rng)):
                draws_out.append(_drops(intact, class_performance(model, test, num_classes, batch_size), c))
        row["random"] = {k: float(np.mean([x[k] for x in draws_out])) for k in draws_out[0]}
        if active is not None:
            with zeroed_channels(model, active[c]):
                row["most_active"] = _drops(intact, class_performance(model, test, num_classes, batch_size), c)
            hit = sum(len(set(active[c].get(layer, [])) & set(ch)) for layer, ch in per.items())
            row["overlap"] = hit / n
        rows.append(row)
    return {"classes": rows, "skipped": skipped, "summary": summarise(rows), "draws": int(draws), "seed": int(seed),
            "n_test": len(test)}


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per removal: mean over classes and 95% Student-t half-width of each drop, and the class count.

    Returns:
        ``{condition: {"accuracy_drop": [mean, ci95], "probability_drop": [...], "others_drop":
        [...], "n_classes": n, "channels": mean channels removed}}`` for the conditions present.
    """
    out: dict[str, dict[str, Any]] = {}
    for cond in CONDITIONS:
        present = [r for r in rows if cond in r]
        if not present:
            continue
        entry: dict[str, Any] = {"n_classes": len(present),
                                 "channels": float(np.mean([r["n_channels"] for r in present]))}
        for key in ("accuracy_drop", "probability_drop", "others_drop"):
            mean, half, _ = mean_ci([r[cond][key] for r in present])
            entry[key] = [mean, half]
        out[cond] = entry
    return out
