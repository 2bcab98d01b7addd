"""Feature removal on a hand-built network where class j depends only on channel j."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from an8flower.baselines import VEBI
from an8flower.errors import UsageError
from an8flower.eval.data import TensorSplit
from an8flower.eval.feature_removal import (
    class_performance,
    feature_removal,
    most_active_channels,
    random_channels,
    relevant_channels,
    zeroed_channels,
)
from an8flower.eval.train import collate_images_labels

K = 4


def channel_net() -> nn.Module:
    """logit_j = 10 * mean over pixels of relu(x_j): class j sees input channel j and nothing else."""
    net = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(K, K, 1, bias=False)),
        ("relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(K, K, bias=False)),
    ]))
    with torch.no_grad():
        net.conv.weight.copy_(torch.eye(K).view(K, K, 1, 1))
        net.fc.weight.copy_(10 * torch.eye(K))
    return net.eval()


def split(per_class: int, seed: int) -> TensorSplit:
    """Class j images: channel j lit (intensity 128-255 per pixel), every other channel 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat(per_class)
    images = torch.zeros(len(labels), K, 6, 6, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, y] = torch.randint(128, 256, (6, 6), generator=g, dtype=torch.uint8)
    return TensorSplit(images, labels, None, None, ids=range(len(labels)))


def test_zeroed_channels_zero_only_the_listed_channels_and_remove_their_hooks() -> None:
    net = channel_net()
    x = split(1, 0).float_images(slice(None))
    with zeroed_channels(net, {"relu": [1, 3]}):
        out = net(x)
    full = net(x)
    assert torch.equal(out[:, [1, 3]], torch.zeros(K, 2))
    assert torch.equal(out[:, [0, 2]], full[:, [0, 2]])
    assert not net.relu._forward_hooks
    with pytest.raises(UsageError, match="channel 9"), zeroed_channels(net, {"relu": [9]}):
        net(x)
    assert not net.relu._forward_hooks  # removed after an error too
    with pytest.raises(UsageError, match="no such module"), zeroed_channels(net, {"nope": [0]}):
        pass


def test_accuracy_counts_ties_fractionally() -> None:
    net = channel_net()
    test = split(3, 1)
    perf = class_performance(net, test, K)
    assert perf["accuracy"].tolist() == [1.0] * K and perf["count"].tolist() == [3] * K
    with zeroed_channels(net, {"relu": list(range(K))}):  # no evidence at all: every logit 0
        blind = class_performance(net, test, K)
    assert blind["accuracy"] == pytest.approx([1 / K] * K) and blind["probability"] == pytest.approx([1 / K] * K)


def test_removing_class_js_feature_drops_class_j_to_chance_and_leaves_the_others() -> None:
    net = channel_net()
    train, test = split(5, 2), split(4, 3)
    vebi = VEBI(mu=5.0).fit(net, DataLoader(train, batch_size=8, collate_fn=collate_images_labels))
    relevant = relevant_channels(vebi)
    # VEBI finds channel j (at the ReLU and/or the pooled map) and nothing else for class j.
    for j in range(K):
        assert relevant[j] and all(ch == [j] for ch in relevant[j].values()), relevant[j]
    sizes = dict(zip(vebi.layers_, vebi.layer_sizes_, strict=True))
    out = feature_removal(net, relevant, test, sizes, train=train, draws=20, seed=0)
    assert out["skipped"] == [] and len(out["classes"]) == K
    for row in out["classes"]:
        assert row["intact"]["accuracy"] == 1.0 and row["intact"]["others"] == 1.0
        assert row["relevant"]["accuracy"] == pytest.approx(1 / K)  # chance: all logits tie at 0
        assert row["relevant"]["probability"] == pytest.approx(1 / K)
        assert row["relevant"]["accuracy_drop"] == pytest.approx(1 - 1 / K)
        assert row["relevant"]["others"] == 1.0 and row["relevant"]["others_drop"] == 0.0
        # The class's own most active channels are channel j: the same removal.
        assert row["overlap"] == 1.0 and row["most_active"]["accuracy_drop"] == pytest.approx(1 - 1 / K)
        # A random channel per layer hits j with probability 1/K (per layer): a much smaller drop.
        assert 0.0 <= row["random"]["accuracy_drop"] < 0.6 * row["relevant"]["accuracy_drop"]
    s = out["summary"]
    assert s["relevant"]["accuracy_drop"][0] == pytest.approx(1 - 1 / K)
    assert s["relevant"]["accuracy_drop"][1] == pytest.approx(0.0, abs=1e-12)  # the same drop for every class
    assert s["random"]["accuracy_drop"][0] < s["relevant"]["accuracy_drop"][0]
    assert s["relevant"]["n_classes"] == K
    # Seeded: the same draws again.
    again = feature_removal(net, relevant, test, sizes, train=train, draws=20, seed=0)
    assert again["summary"] == s


def test_random_and_most_active_channels_keep_the_per_layer_counts() -> None:
    rng = np.random.default_rng(0)
    picked = random_channels({"a": 3, "b": 1, "c": 0}, {"a": 5, "b": 2, "c": 4}, rng)
    assert set(picked) == {"a", "b"} and len(set(picked["a"])) == 3 and all(0 <= c < 5 for c in picked["a"])
    net = channel_net()
    active = most_active_channels(net, split(2, 4), {0: {"relu": 2}, 3: {"relu": 1, "pool": 1}})
    assert active[3] == {"relu": [3], "pool": [3]}
    assert len(active[0]["relu"]) == 2 and 0 in active[0]["relu"]  # channel 0, then the lowest index of the zeros


def test_bad_arguments_are_usage_errors() -> None:
    net, test = channel_net(), split(1, 5)
    with pytest.raises(UsageError, match="draws"):
        feature_removal(net, {0: {"relu": [0]}}, test, {"relu": K}, draws=0)
    with pytest.raises(UsageError, match="layer_sizes"):
        feature_removal(net, {0: {"relu": [0]}}, test, {})
    out = feature_removal(net, {0: {}, 1: {"relu": [1]}}, test, {"relu": K})
    assert out["skipped"] == [0] and [r["class"] for r in out["classes"]] == [1] and "most_active" not in out["summary"]
