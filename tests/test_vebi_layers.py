"""VEBI's named layer sets: the default (rectified and pooled outputs) and the released code's (every layer output)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from an8flower.baselines import VEBI
from an8flower.baselines.features import LAYER_PRESETS, default_layers
from an8flower.errors import UsageError


def net() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 4, 3, padding=1)), ("bn", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("fc1", nn.Linear(4 * 4 * 4, 5)),
        ("relu_fc", nn.ReLU()), ("fc2", nn.Linear(5, 3)),
    ])).eval()


def test_released_layers_are_every_layer_output_but_the_logits() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert default_layers(net(), x) == ["relu", "pool", "relu_fc"]
    assert default_layers(net(), x, "rectified") == ["relu", "pool", "relu_fc"]
    # Convolutions, batch norm, ReLU, pooling and the hidden linear layer; not the flatten nor the logits fc2.
    assert default_layers(net(), x, "released") == ["conv", "bn", "relu", "pool", "fc1", "relu_fc"]
    assert set(LAYER_PRESETS) == {"rectified", "released"}
    with pytest.raises(UsageError, match="unknown layer set 'all'"):
        default_layers(net(), x, "all")


def test_vebi_fits_on_a_preset_and_keeps_it_through_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = net()
    x, y = torch.rand(30, 3, 8, 8), torch.arange(30) % 3
    vebi = VEBI(mu=5.0, layers="released").fit(model, DataLoader(TensorDataset(x, y), batch_size=10))
    assert vebi.layers == "released" and vebi.options()["layers"] == "released"
    assert vebi.layers_ == ["conv", "bn", "relu", "pool", "fc1", "relu_fc"] and vebi.layer_sizes_ == [4, 4, 4, 4, 5, 5]
    vebi.save(tmp_path / "v.npz")
    loaded = VEBI().load(tmp_path / "v.npz")
    assert loaded.layers == "released" and loaded.layers_ == vebi.layers_
    # A plain string that is not a preset is one module name, as before.
    assert VEBI(layers="relu").layers == ["relu"]
