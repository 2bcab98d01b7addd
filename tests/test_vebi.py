"""VEBI (an8flower.baselines.vebi): relevant-feature selection, explanation, stride fix, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from an8flower.baselines import VEBI, build_explainer, list_explainers
from an8flower.baselines.features import channel_energy, default_layers, feature_vector
from an8flower.baselines.vebi import minmax_normalise, postprocess_signal
from an8flower.errors import UsageError


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name


# --- the feature vector ------------------------------------------------------------------------


def test_feature_vector_hand_values() -> None:
    """s_c = sum A^2, L1-normalised per layer, concatenated, L2-normalised."""
    a = torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2): energies 2 and 4
    b = torch.tensor([[3.0, 0.0, 1.0]])  # linear layer, units as channels: energies 9, 0, 1
    e = [channel_energy(a), channel_energy(b)]
    torch.testing.assert_close(e[0], torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(e[1], torch.tensor([[9.0, 0.0, 1.0]]))
    raw = torch.tensor([1 / 3, 2 / 3, 0.9, 0.0, 0.1])
    torch.testing.assert_close(feature_vector(e)[0], raw / raw.norm())
    # A silent layer contributes zeros, not NaN.
    silent = feature_vector([torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])])
    torch.testing.assert_close(silent, torch.tensor([[0.0, 0.0, 2**-0.5, 2**-0.5]]))


# --- relevant features: a network whose channel j fires only for class j -----------------------


K = 4


def class_net() -> nn.Module:
    """Channel j of the conv/ReLU is the input's channel j; the logits read the pooled channels."""
    net = nn.Sequential(
        nn.Conv2d(K, K, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(K, K)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(K).view(K, K, 1, 1))
        net[0].bias.zero_()
        net[4].weight.copy_(torch.eye(K))
        net[4].bias.zero_()
    return net.eval()


def class_data(n_per_class: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of class j: channel j positive, every other channel negative (silenced by the ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(n_per_class)
    x = -torch.rand(labels.numel(), K, 6, 6, generator=gen)
    x[torch.arange(labels.numel()), labels] = 0.5 + torch.rand(labels.numel(), 6, 6, generator=gen)
    return x, labels


def test_channel_j_is_the_relevant_feature_of_class_j() -> None:
    net = class_net()
    x, y = class_data()
    vebi = VEBI(mu=5.0, layers=["1"]).fit(net, DataLoader(TensorDataset(x, y), batch_size=10))
    for j in range(K):
        feats = vebi.relevant_features(j)
        assert [f.name for f in feats] == [f"1:{j}"], j
        # Features are exactly e_j for class j, so the least-squares weight is 1 (inside the L1 ball).
        assert feats[0].weight == pytest.approx(1.0, abs=1e-4)
    assert vebi.fit_info_["lasso_converged"]
    assert vebi.fit_info_["relevant_per_class"] == [1] * K
    assert_no_hooks(net)


def test_default_layers_skip_the_logits_and_still_find_channel_j() -> None:
    net = class_net()
    x, y = class_data()
    assert default_layers(net, x) == ["1", "2"]  # ReLU and pool; not the signed conv "0" nor the logits "4"
    # Without ReLU modules: convolutions and linear layers, still not the logits.
    plain = nn.Sequential(nn.Conv2d(K, K, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(K, K), nn.Linear(K, K))
    assert default_layers(plain, x) == ["0", "1", "3"]
    vebi = VEBI(mu=5.0).fit(net, DataLoader(TensorDataset(x, y), batch_size=16))
    for j in range(K):
        top = vebi.relevant_features(j)[0]
        assert top.channel == j and top.layer in ("1", "2"), (j, top)


def test_predicted_labels_option_uses_the_model_predictions() -> None:
    net = class_net()
    x, y = class_data()
    wrong = (y + 1) % K  # ground truth says class j+1 ...
    by_truth = VEBI(mu=5.0, layers=["1"]).fit(net, DataLoader(TensorDataset(x, wrong), batch_size=16))
    by_pred = VEBI(mu=5.0, layers=["1"], labels="predicted").fit(net, DataLoader(TensorDataset(x, wrong), batch_size=16))
    # ... so with ground truth class j+1 gets channel j; with predictions class j keeps channel j.
    assert by_truth.relevant_features(1)[0].channel == 0
    assert by_pred.relevant_features(1)[0].channel == 1


# --- explanation -------------------------------------------------------------------------------


def test_explanation_is_the_max_of_the_top_k_maps_and_batches_like_single_images() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    with torch.no_grad():  # every channel alive, so every weighted feature has a positive contribution
        net[0].weight.abs_()
        net[3].weight.abs_()
    layers = ["1", "4"]
    w = torch.zeros(12, 3)
    w[[0, 3, 7, 11], 0] = torch.tensor([0.5, 1.0, 2.0, 0.25])
    w[[1, 2], 1] = 1.0
    vebi = VEBI(k=3, layers=layers).set_weights(layers, [6, 6], w)
    x = torch.rand(5, 3, 16, 16)
    t = torch.tensor([0, 0, 1, 2, 0])
    out = vebi.explain_features(net, x, t)
    assert out.maps.shape == (5, 3, 16, 16)
    torch.testing.assert_close(out.heatmaps, out.maps.amax(dim=1))
    assert float(out.maps.min()) >= 0 and float(out.maps.max()) <= 1
    # The top-3 contributions r = x w_c / sum(w_c) of class 0, recomputed by hand.
    with torch.no_grad():
        a1 = net[1](net[0](x))
        a2 = net[4](net[3](net[2](a1)))
    feats = feature_vector([channel_energy(a1), channel_energy(a2)])
    r = feats[0] * w[:, 0] / w[:, 0].sum()
    torch.testing.assert_close(out.contributions[0], r.topk(3).values)
    assert out.features[0].tolist() == r.topk(3).indices.tolist()
    assert out.names[0] == [f"{layers[i // 6]}:{i % 6}" for i in r.topk(3).indices.tolist()]
    # Class 1 has two relevant features: the third slot is empty; class 2 has none: a zero map.
    assert out.n_features.tolist() == [3, 3, 2, 0, 3]
    assert out.features[2, 2] == -1 and bool((out.maps[2, 2] == 0).all())
    assert bool((out.heatmaps[3] == 0).all())
    # Batch == per image; the protocol call returns the same heatmaps.
    single = torch.cat([vebi(net, x[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(vebi(net, x, t), single, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, out.heatmaps, atol=1e-5, rtol=0)
    assert_no_hooks(net)


def test_single_logit_feature_without_stride_fix_equals_guided_backprop() -> None:
    """Feature = logit c, fix off: the signal is logit_c * guided gradient; post-processing drops the scale."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3),
                        nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.rand(6, 3, 20, 20)
    net(x)
    net.eval()
    logits = net(x).detach()
    targets = logits.argmax(dim=1)
    assert bool((logits.gather(1, targets[:, None]) > 0).all())  # the sign of the seed is that of the logit
    vebi = VEBI(k=1, stride_fix=False, layers=["6"]).set_weights(["6"], [4], torch.eye(4))
    guided = build_explainer("guided_backprop", reduction="pos_l2")(net, x, targets)
    torch.testing.assert_close(vebi(net, x, targets), minmax_normalise(guided), atol=1e-5, rtol=0)


def stride_frequency_share(h: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Share of a map's non-DC spectral energy at the frequencies k * (H/s, W/s), k != 0 (the stride's)."""
    f = torch.fft.fft2(h - h.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    hh, ww = h.shape[-2:]
    rows = [(hh // stride * a) % hh for a in range(stride)]
    cols = [(ww // stride * b) % ww for b in range(stride)]
    at = sum(f[..., i, j] for i in rows for j in cols if (i, j) != (0, 0))
    return at / f.sum(dim=(-2, -1))


def test_stride_fix_removes_the_checkerboard() -> None:
    """Two stride-2 convolutions: without the fix >= 10x more energy at the stride's frequencies."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[0].bias.fill_(0.5)
        net[2].bias.fill_(0.5)
    x = 0.4 + 0.2 * torch.rand(4, 3, 32, 32)
    t = torch.arange(4)
    weights = torch.eye(8)[:, :4].contiguous()
    share = {}
    for fix in (False, True):
        vebi = VEBI(k=1, stride_fix=fix, layers=["3"]).set_weights(["3"], [8], weights)
        share[fix] = stride_frequency_share(vebi(net, x, t))
    assert bool((share[False] > 0.1).all())  # the control: a visible checkerboard
    assert bool((share[False] >= 10 * share[True]).all()), share


# --- interpretation, save/load, errors ---------------------------------------------------------


def test_interpret_averages_over_the_top_images() -> None:
    net = class_net()
    x, y = class_data(n_per_class=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    vebi = VEBI(mu=5.0, layers=["1"], top_n=4).fit(net, loader)
    per_class = vebi.interpret(net, loader)
    assert sorted(per_class) == list(range(K))
    for j, feats in per_class.items():
        (f,) = feats
        assert f.n_images == 4  # only the 6 images of class j activate channel j; the top 4 are kept
        assert f.average_map.shape == (6, 6) and f.average_image.shape == (K, 6, 6)
        # The signal lives in input channel j only (the 1x1 identity conv).
        others = [c for c in range(K) if c != j]
        assert float(f.average_image[others].abs().max()) == 0.0
        assert float(f.average_image[j].max()) > 0
    assert_no_hooks(net)


def test_save_load_round_trip(tmp_path) -> None:
    net = class_net()
    x, y = class_data()
    vebi = VEBI(mu=5.0, layers=["1"]).fit(net, DataLoader(TensorDataset(x, y), batch_size=16))
    path = tmp_path / "vebi.npz"
    vebi.save(path)
    with np.load(path, allow_pickle=False) as data:  # no pickled objects inside
        assert set(data.files) == {"weights", "layer_sizes", "meta"}
    loaded = VEBI(k=2).load(path)
    assert loaded.mu == 5.0 and loaded.k == 2 and loaded.layers_ == ["1"]
    torch.testing.assert_close(loaded.weights_, vebi.weights_)
    assert [f.name for f in loaded.relevant_features(2)] == ["1:2"]
    torch.testing.assert_close(loaded(net, x[:4]), vebi(net, x[:4]))
    assert [p.name for p in tmp_path.iterdir()] == ["vebi.npz"]  # no temporary file left


def test_errors_name_the_problem(tmp_path) -> None:
    assert "vebi" in list_explainers()
    net = class_net()
    x, y = class_data()
    with pytest.raises(UsageError, match="not fitted"):
        VEBI()(net, x[:2])
    with pytest.raises(UsageError, match="mu must be > 0"):
        VEBI(mu=0)
    with pytest.raises(UsageError, match="labels must be one of"):
        VEBI(labels="oracle")
    with pytest.raises(UsageError, match="nope"):
        VEBI(layers=["nope"]).fit(net, DataLoader(TensorDataset(x, y), batch_size=16))
    with pytest.raises(UsageError, match="vebi state file not found: .*missing.npz"):
        VEBI().load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="bad.npz"):
        VEBI().load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros((2, 2), np.float32), layer_sizes=np.array([2]), meta=np.asarray('{"format": "x"}'))
    with pytest.raises(UsageError, match="not a vebi state file"):
        VEBI().load(other)
    fitted = VEBI(layers=["1"]).set_weights(["1"], [K], torch.eye(K))
    wide = nn.Sequential(nn.Conv2d(K, K + 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(K + 1, K))
    with pytest.raises(UsageError, match="has 5 channels in this model but 4"):
        fitted(wide, x[:2])
    with pytest.raises(UsageError, match="out of range"):
        fitted(net, x[:2], torch.tensor([0, K]))
    assert_no_hooks(net)
    assert_no_hooks(wide)


def test_postprocess_rectifies_and_takes_the_l2_norm_over_channels() -> None:
    signal = torch.tensor([[[[3.0, -1.0]], [[4.0, 2.0]]]])  # (1, 2, 1, 2)
    # Pixel 0: |(3, 4)| = 5; pixel 1: |(0, 2)| = 2 -> min-max -> (1, 0).
    torch.testing.assert_close(postprocess_signal(signal), torch.tensor([[[1.0, 0.0]]]))
    assert bool((minmax_normalise(torch.ones(1, 2, 2)) == 0).all())
