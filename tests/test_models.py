"""Classifiers by name, seeded initialisation, model hashes and loading weights from local files."""

from __future__ import annotations

import torch
import torchvision
import pytest

from an8flower.errors import UsageError
from an8flower.eval.models import (
    DEFAULT_CAM_LAYER,
    build_model,
    list_models,
    load_checkpoint,
    load_weights,
    model_hash,
)
from an8flower.eval.train import model_card, save_checkpoint


def _card(arch: str, k: int) -> dict:
    return model_card(arch, k, (3, 32, 32), {"name": "test"}, {"test": 1.0}, seed=0)


@pytest.mark.parametrize(
    "name, shape",
    [("small-cnn", (2, 3, 64, 64)), ("lenet", (2, 1, 28, 28)), ("resnet18", (2, 3, 64, 64)),
     ("resnet50", (1, 3, 64, 64)), ("vgg16", (1, 3, 32, 32))],
)
def test_every_model_maps_images_to_logits_and_has_its_cam_layer(name: str, shape: tuple) -> None:
    model = build_model(name, 5, seed=0).eval()
    with torch.no_grad():
        out = model(torch.rand(shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (shape[0], 5)
    assert torch.isfinite(out).all()
    assert DEFAULT_CAM_LAYER[name] in dict(model.named_modules())


def test_list_models_and_unknown_name() -> None:
    assert list_models() == ["lenet", "resnet18", "resnet50", "small-cnn", "vgg16"]
    with pytest.raises(UsageError, match="unknown model 'alexnet'"):
        build_model("alexnet", 3)
    with pytest.raises(UsageError, match="num_classes"):
        build_model("small-cnn", 1)


def test_seeded_initialisation_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = build_model("small-cnn", 4, seed=3), build_model("small-cnn", 4, seed=3), build_model("small-cnn", 4, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model_hash(a) == model_hash(b) != model_hash(c)


def test_model_hash_tracks_every_weight() -> None:
    model = build_model("small-cnn", 3, seed=0)
    h = model_hash(model)
    assert len(h) == 64 and h == model_hash(build_model("small-cnn", 3, seed=0))
    with torch.no_grad():
        model.features.bn2.running_mean[5] += 1e-3  # a buffer, not a parameter
    assert model_hash(model) != h


def test_resnet_blocks_with_distinct_relus_compute_what_torchvision_computes() -> None:
    ours = build_model("resnet18", 7, seed=0).eval()
    ref = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    ref.load_state_dict(ours.net.state_dict())
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref((x - ours.normalize.mean) / ours.normalize.std)
        assert torch.allclose(ours(x), expected, atol=1e-5)
    relus = [m for m in ours.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) == 1 + 2 * 8  # stem + two per basic block
    assert not any(m.inplace for m in relus)


def test_checkpoint_round_trip(tmp_path) -> None:
    model = build_model("small-cnn", 6, seed=1).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, _card("small-cnn", 6))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded, card = load_checkpoint(path)
    assert card["architecture"] == "small-cnn" and card["num_classes"] == 6
    assert model_hash(loaded) == model_hash(model)
    again = build_model("small-cnn", 6, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left


def test_plain_torchvision_state_dict_loads_into_the_wrapper(tmp_path) -> None:
    ref = torchvision.models.resnet18(weights=None, num_classes=4)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = build_model("resnet18", 4, weights=tmp_path / "tv.pth")
    assert torch.equal(ours.net.fc.weight, ref.fc.weight)


def test_missing_file_names_it(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(UsageError, match="nope.pt"):
        build_model("small-cnn", 3, weights=missing)
    with pytest.raises(UsageError, match="nope.pt"):
        load_checkpoint(missing)


def test_unreadable_file_names_it(tmp_path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="garbage.pt"):
        load_weights(build_model("small-cnn", 3), bad)


def test_wrong_architecture_names_the_file(tmp_path) -> None:
    path = tmp_path / "small.pt"
    save_checkpoint(path, build_model("small-cnn", 3, seed=0), _card("small-cnn", 3))
    with pytest.raises(UsageError, match="small.pt.*does not fit"):
        build_model("resnet18", 3, weights=path)
    with pytest.raises(UsageError, match=r"small.pt holds a 'small-cnn' model, not 'vgg16'"):
        load_checkpoint(path, name="vgg16")
    with pytest.raises(UsageError, match="small.pt.*3 classes"):
        build_model("small-cnn", 5, weights=path)


def test_checkpoint_without_card_cannot_be_rebuilt_alone(tmp_path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(build_model("small-cnn", 3).state_dict(), path)
    with pytest.raises(UsageError, match="plain.pt has no model card"):
        load_checkpoint(path)
    assert model_hash(build_model("small-cnn", 3, weights=path))  # a plain state dict still loads


@pytest.mark.parametrize("content", ["pickle-with-code", "numpy-array", "text", "empty"])
def test_a_file_that_is_not_a_checkpoint_is_refused_without_unsafe_advice(tmp_path, content: str) -> None:
    import pickle

    import numpy as np


    class Runs:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "not-a-checkpoint.pt"
    if content == "pickle-with-code":
        path.write_bytes(pickle.dumps({"state_dict": Runs()}))
    elif content == "numpy-array":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.write_bytes(path.with_suffix(".npy").read_bytes())
    else:
        path.write_text("hello\n" if content == "text" else "")
    with pytest.raises(UsageError) as info:
        build_model("small-cnn", 6, weights=path)
    message = str(info.value)
    assert str(path) in message and "not an an8flower or PyTorch checkpoint" in message
    assert "weights_only" not in message and "False" not in message


def test_leaderboard_weights_error_is_one_line_without_unsafe_advice(tmp_path, capsys) -> None:
    from an8flower.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04\x95not a pickle")
    code = main(["leaderboard", "--variant", "single-6c", "--weights", str(bad), "--out", str(tmp_path / "r"),
                 "--size", "64", "--per-class", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not an an8flower or PyTorch checkpoint" in err and "weights_only" not in err
