"""Training: it learns a colour-of-a-part task, is reproducible, early-stops, and writes a model card."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from an8flower.errors import UsageError
from an8flower.eval.config import TrainConfig
from an8flower.eval.models import build_model, load_checkpoint, model_hash
from an8flower.eval.train import evaluate, model_card, predict, read_model_card, save_checkpoint, train

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])


class Squares(Dataset):
    """A 3-class toy: the colour of a 10x10 square at a random place on a noisy grey background."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.images = 0.4 + 0.2 * torch.rand(n, 3, size, size, generator=g)
        self.masks = torch.zeros(n, size, size, dtype=torch.bool)
        for i in range(n):
            y, x = torch.randint(0, size - 10, (2,), generator=g).tolist()
            self.images[i, :, y : y + 10, x : x + 10] = COLOURS[self.labels[i]].view(3, 1, 1)
            self.masks[i, y : y + 10, x : x + 10] = True

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), self.masks[i]


@pytest.fixture(scope="module")
def data() -> tuple[Squares, Squares]:
    return Squares(96, seed=0), Squares(48, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    config = TrainConfig(epochs=6, batch_size=16, lr=1e-2, seed=0, hflip=True)
    return train(build_model("small-cnn", 3, seed=0), data[0], data[1], config, device="cpu", progress=False), config


def test_it_learns_the_task_and_keeps_the_best_epoch(data, trained) -> None:
    result, _ = trained
    assert result.val_accuracy >= 0.9
    assert evaluate(result.model, data[1]) == pytest.approx(result.val_accuracy)
    best = max(h["val_accuracy"] for h in result.history)
    assert result.val_accuracy == best
    assert result.history[result.best_epoch - 1]["val_accuracy"] == best
    assert all(h["val_accuracy"] < best for h in result.history[: result.best_epoch - 1])  # earliest best
    assert not result.model.training


def test_same_seed_same_weights_and_global_rng_untouched(data, trained) -> None:
    result, config = trained
    state = torch.random.get_rng_state()
    again = train(build_model("small-cnn", 3, seed=0), data[0], data[1], config, device="cpu", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model_hash(again.model) == model_hash(result.model)
    assert again.history == result.history


def test_early_stop_at_a_target_accuracy(data) -> None:
    config = TrainConfig(epochs=5, batch_size=32, stop_at=0.0)
    result = train(build_model("small-cnn", 3, seed=0), data[0], data[1], config, device="cpu", progress=False)
    assert len(result.history) == 1 and result.best_epoch == 1


def test_without_validation_it_trains_all_epochs(data) -> None:
    config = TrainConfig(epochs=2, batch_size=48)
    result = train(build_model("small-cnn", 3, seed=0), data[0], None, config, device="cpu", progress=False)
    assert len(result.history) == 2 and result.best_epoch == 2 and math.isnan(result.val_accuracy)


def test_predict_returns_predictions_in_order(data, trained) -> None:
    model = trained[0].model
    pred, labels = predict(model, data[1], batch_size=7)
    assert torch.equal(labels, data[1].labels)
    with torch.no_grad():
        assert torch.equal(pred, model(data[1].images).argmax(1))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(UsageError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(UsageError, match="training set is empty"):
        train(build_model("small-cnn", 3), Squares(0, 0), None, progress=False)


def test_model_card_contents_and_checkpoint(tmp_path, data, trained) -> None:
    result, config = trained
    dataset = {"name": "squares", "variant": "toy", "manifest_hash": "ab" * 32, "seed": 0, "sizes": {"train": 96, "val": 48}}
    card = model_card(
        "small-cnn", 3, (3, 32, 32), dataset,
        {"train": result.train_accuracy, "val": result.val_accuracy, "test": math.nan},
        seed=0, config=config, history=result.history, classes=["red", "green", "blue"],
    )
    assert card["architecture"] == "small-cnn" and card["num_classes"] == 3
    assert card["input_size"] == [3, 32, 32] and card["classes"] == ["red", "green", "blue"]
    assert card["dataset"]["manifest_hash"] == "ab" * 32
    assert card["accuracy"]["val"] == pytest.approx(result.val_accuracy) and card["accuracy"]["test"] is None
    assert card["seed"] == 0 and card["training"]["epochs"] == 6 and card["training"]["hflip"] is True
    assert len(card["history"]) == len(result.history)
    assert set(card["versions"]) == {"an8flower", "torch", "torchvision", "python"}
    assert card["versions"]["torch"] == str(torch.__version__)
    json.loads(json.dumps(card, allow_nan=False))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, result.model, card)
    assert read_model_card(path) == card
    model, loaded = load_checkpoint(path, name="small-cnn")
    assert loaded == card and model_hash(model) == model_hash(result.model)
    assert evaluate(model, data[1]) == pytest.approx(result.val_accuracy)


def test_unwritable_checkpoint_names_the_path(tmp_path, trained) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="file/sub/ckpt.pt"):
        save_checkpoint(blocker / "sub" / "ckpt.pt", trained[0].model, {"architecture": "small-cnn"})


def test_results_checkpoints_and_vebi_files_honour_the_umask(tmp_path) -> None:
    """Temporary files renamed into place keep the mode open() would give (0o666 & ~umask), not 0o600."""
    import os

    from test_vebi import class_data, class_net
    from torch.utils.data import DataLoader, TensorDataset

    from an8flower.atomic import atomic_write
    from an8flower.baselines import VEBI
    from an8flower.eval.models import build_model
    from an8flower.eval.train import save_checkpoint

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "results" / "results.csv", "a,b\n")
        save_checkpoint(tmp_path / "m.pt", build_model("small-cnn", 3, seed=0), {"architecture": "small-cnn", "num_classes": 3})
        x, y = class_data()
        VEBI(mu=5.0, layers=["1"]).fit(class_net(), DataLoader(TensorDataset(x, y), batch_size=16)).save(tmp_path / "v.npz")
        for rel in ("results/results.csv", "m.pt", "v.npz"):
            assert os.stat(tmp_path / rel).st_mode & 0o777 == 0o644, rel
        os.umask(0o077)
        atomic_write(tmp_path / "private.csv", "x\n")
        assert os.stat(tmp_path / "private.csv").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
