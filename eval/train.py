"""Training the classifiers to explain, and their checkpoints with a model card.

:func:`train` fits a model on a labelled dataset with a fixed seed: AdamW with a linear warm-up
then cosine decay of the learning rate, cross-entropy, optional horizontal flips (label-preserving on an8Flower,
whose classes are colours of parts), mixed precision on CUDA, and early stopping on validation
accuracy (the weights of the best validation epoch are kept). Shuffling uses its own
``torch.Generator`` and the initialisation :func:`~an8flower.eval.models.build_model`'s ``seed``,
so the global RNG state is never touched and a seed reproduces the same weights on the same
machine and software versions.

A checkpoint (:func:`save_checkpoint`) is a ``torch.save`` dict ``{"state_dict", "model_card"}``;
the model card is a JSON-serialisable dict (:func:`model_card`): architecture, number of classes,
input size and channels, the dataset it was trained on (variant, manifest or spec hash, sizes),
accuracy per split, seed, training settings and history, and the versions of an8flower, torch and
torchvision. :func:`an8flower.eval.models.load_checkpoint` rebuilds the model from it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from an8flower.defaults import BOARD_PER_CLASS, BOARD_SIZE, TRAIN_DEFAULTS
from an8flower.errors import UsageError
from an8flower.eval.config import TrainConfig, build_run_config
from an8flower.eval.data import prepare_an8flower
from an8flower.eval.models import build_model, fold_model_options, resolve_model

if TYPE_CHECKING:
    from an8flower.eval.models import ModelSpec

__all__ = [
    "collate_images_labels",
    "TrainResult",
    "train",
    "evaluate",
    "predict",
    "model_card",
    "save_checkpoint",
    "read_model_card",
    "software_versions",
    "LOW_ACCURACY",
    "accuracy_warning",
    "resolve_device",
    "train_checkpoint",
    "RECIPES",
    "model_family",
    "recipe_config",
]


#: The training recipe per model family: settings applied over ``TRAIN_DEFAULTS`` (a run's or a
#: user's explicit settings win over both; see :func:`recipe_config`).
#:
#: * ``cnn`` (the small CNN, LeNet, ResNets, VGG): ``TRAIN_DEFAULTS`` as they are (AdamW, peak lr
#:   1e-2, 10% linear warm-up then cosine decay, horizontal flips).
#: * ``vit`` (any model with attention blocks: the ViT presets, ``timm:`` / ``torchvision:`` ViTs):
#:   AdamW with peak lr 1e-3 and weight decay 0.05 (the DeiT recipe's optimiser, Touvron et al.
#:   2021, scaled to batch 64: a ViT diverges or stalls at the CNN's 1e-2), the same 10% warm-up
#:   (transformers trained from scratch need it: without it the first steps' large updates
#:   saturate the attention softmax), up to 40 epochs with patience 10 (a ViT has no
#:   convolutional prior, learns more slowly and its validation accuracy is noisier), random
#:   shifts of up to 10% and zooms of +-10% besides the flips (the inductive bias a small-data ViT
#:   lacks, given as data; shifts and zooms keep an8Flower's labels, colour changes would not),
#:   and label smoothing 0.1 (DeiT's). No mixup/cutmix or RandAugment: they mix or recolour parts,
#:   which are what an8Flower's labels are.
#:
#:   Measured on the shared 2-core CPU (``OMP_NUM_THREADS=2``, ``an8flower train --model vit-tiny
#:   --size 112``, 500 per class, seed 0): single-6c, the full recipe: test 95.7% (val 95.3%, best
#:   epoch 36 of 40) in 1123 s (load average 0.9-3.3); double-12c with ``--epochs 10``: test 78.4%
#:   (val 79.3%) in 1368 s (load 2.6-7.0), still rising (val 28.5, 51.3, 61.2, 64.8, 70.0, 72.7,
#:   75.8, 78.3, 79.3, 79.0% per epoch); the full 40 epochs were not run there for lack of time.
RECIPES: dict[str, dict[str, Any]] = {
    "cnn": {},
    "vit": {"lr": 1e-3, "weight_decay": 0.05, "epochs": 40, "patience": 10, "translate": 0.1, "scale": 0.1,
            "label_smoothing": 0.1},
}


def model_family(model: nn.Module | str | ModelSpec) -> str:
    """``"vit"`` for a model with attention blocks (:func:`an8flower.baselines.transformer.is_transformer`),
    else ``"cnn"``; a name or spec is looked at on the ``meta`` device (nothing allocated)."""
    from an8flower.baselines.vit import is_transformer

    if not isinstance(model, nn.Module):
        from an8flower.eval.models import resolve_model

        model = resolve_model(model).skeleton()
    return "vit" if is_transformer(model) else "cnn"


def recipe_config(model: nn.Module | str | ModelSpec, explicit: dict[str, Any] | None = None, **base: Any) -> TrainConfig:
    """The :class:`TrainConfig` for ``model``: ``TRAIN_DEFAULTS``, then ``base`` (a run's fixed
    settings: seed, workers, flips), then the family's :data:`RECIPES`, then ``explicit`` (what the
    user set: config file ``[train]`` table, command-line flags), which wins."""
    return TrainConfig(**{**TRAIN_DEFAULTS, **base, **RECIPES[model_family(model)], **(explicit or {})})


@dataclass
class TrainResult:
    """What :func:`train` returns: the model (best validation weights, eval mode) and its history."""

    model: nn.Module
    best_epoch: int
    val_accuracy: float
    train_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def collate_images_labels(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(image, label, ...)`` items into an image batch and a label batch."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    return images, labels


def _loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0) -> DataLoader:
    # Always our own generator: without one, every DataLoader iterator draws its base seed from the
    # global RNG.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        collate_fn=collate_images_labels,
        persistent_workers=workers > 0,
    )


@torch.no_grad()
def predict(
    model: nn.Module, data: Dataset | Iterable, batch_size: int = 128, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and true labels of every item of ``data``, in order.

    Args:
        model: the classifier (its device is used; put in eval mode for the call).
        data: a dataset yielding ``(image, label, ...)`` items, or an iterable of
            ``(images, labels, ...)`` batches.
        batch_size, workers: of the ``DataLoader`` built when ``data`` is a dataset.

    Returns:
        ``(predictions, labels)``, two long tensors (N,) on the CPU.
    """
    loader = _loader(data, batch_size, workers, shuffle=False) if isinstance(data, Dataset) else data
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        for batch in loader:
            images, y = batch[0], batch[1]
            preds.append(model(images.to(device)).argmax(1).cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        model.train(was_training)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def evaluate(model: nn.Module, data: Dataset | Iterable, batch_size: int = 128, workers: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (NaN for an empty dataset)."""
    pred, y = predict(model, data, batch_size, workers)
    return float((pred == y).float().mean()) if y.numel() else math.nan


def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    coin = torch.rand(images.shape[0], generator=generator) < 0.5
    coin = coin.to(images.device).view(-1, 1, 1, 1)
    return torch.where(coin, images.flip(-1), images)


def _affine(images: torch.Tensor, translate: float, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random shift (up to ``translate`` of the side) and zoom (``1 +- scale``) per image, batched."""
    b = images.shape[0]
    draws = torch.rand(b, 3, generator=generator).to(images.device, images.dtype) * 2 - 1  # uniform in [-1, 1)
    zoom = 1 + scale * draws[:, 0]
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = 2 * translate * draws[:, 1:]  # grid units: the image spans [-1, 1]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _warmup_cosine(total: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first 10% of steps, then cosine decay to 0."""
    warm = max(1, round(0.1 * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


def _default_epoch_log(progress: bool | None) -> Callable[[str], None] | None:
    """One line per epoch on stderr when no progress bar shows (not a terminal: logs, CI, batch jobs)."""
    import sys

    if progress is None and not sys.stderr.isatty():
        return lambda line: print(line, file=sys.stderr, flush=True)
    return None


def train(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (a frozen dataclass: one shared default is safe)
    device: str | torch.device | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set``, early-stopping on ``val_set`` accuracy.

    Args:
        model: a classifier from :func:`~an8flower.eval.models.build_model` (moved to ``device``).
        train_set: yields ``(image float (C,H,W) in [0,1], label, ...)``.
        val_set: the same for validation; ``None`` trains for ``config.epochs`` epochs and keeps
            the last weights.
        config: see :class:`TrainConfig`.
        device: where to train; ``None`` picks CUDA when available, else the CPU.
        progress: show a tqdm bar (``None``: only on a terminal).
        log: called with one line per epoch (loss, accuracies, best epoch); default: stderr when
            ``progress`` is None and stderr is not a terminal (where no bar shows), else nothing.

    Returns:
        A :class:`TrainResult` whose model holds the weights of the best validation epoch (the
        earliest one on ties), in eval mode.
    """
    from tqdm.auto import tqdm

    if len(cast(Sized, train_set)) == 0:  # torch's Dataset does not declare __len__
        raise UsageError("the training set is empty")
    if log is None:
        log = _default_epoch_log(progress)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    use_amp = bool(config.amp) and device.type == "cuda"
    generator = torch.Generator().manual_seed(config.seed)
    loader = _loader(train_set, config.batch_size, config.workers, shuffle=True, seed=config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(config.epochs * len(loader)))
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    best_acc, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=config.epochs * len(loader), desc="train", unit="batch", disable=None if progress is None else not progress)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            total_loss, correct, seen = 0.0, 0, 0
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if config.hflip:
                    images = _flip(images, generator)
                if config.translate or config.scale:
                    images = _affine(images, config.translate, config.scale, generator)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(images)
                    loss = loss_fn(logits, labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total_loss += float(loss.detach()) * labels.numel()
                correct += int((logits.detach().argmax(1) == labels).sum())
                seen += labels.numel()
                bar.update(1)
            record = {"epoch": float(epoch), "loss": total_loss / seen, "train_accuracy": correct / seen}
            if val_set is not None:
                record["val_accuracy"] = evaluate(model, val_set, batch_size=2 * config.batch_size, workers=config.workers)
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record['val_accuracy']:.3f}")
            else:
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            history.append(record)
            score = record.get("val_accuracy", float(epoch))
            if score > best_acc:
                best_acc, best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            if log is not None:
                val = (f", val {100 * record['val_accuracy']:.1f}% (best {100 * best_acc:.1f}% at epoch {best_epoch})"
                       if "val_accuracy" in record else "")
                log(f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}, train {100 * record['train_accuracy']:.1f}%"
                    f"{val}")
            if val_set is None:
                continue
            if config.stop_at is not None and score >= config.stop_at:
                break
            if epoch - best_epoch >= config.patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best = history[best_epoch - 1]
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        val_accuracy=best.get("val_accuracy", math.nan),
        train_accuracy=best["train_accuracy"],
        history=history,
        seconds=time.perf_counter() - start,
    )


#: Test accuracy below which a model's explanations are flagged: a model that has not learned the
#: task gives explanations of its errors, not of the task.
LOW_ACCURACY = 0.9


def accuracy_warning(accuracy: float, split: str = "test") -> str | None:
    """A one-line warning when ``accuracy`` is below :data:`LOW_ACCURACY` (or undefined), else None."""
    if accuracy is not None and math.isfinite(accuracy) and accuracy >= LOW_ACCURACY:
        return None
    shown = "undefined" if accuracy is None or not math.isfinite(accuracy) else f"{100 * accuracy:.1f}%"
    return (f"{split} accuracy {shown} is below {100 * LOW_ACCURACY:.0f}%: explanations of a model that has not "
            "learned the task mean little (train longer, on more images, or check the data)")


def software_versions() -> dict[str, str]:
    """Versions of Python, an8flower, torch and torchvision (for model cards and run records)."""
    import torchvision

    from an8flower import __version__

    return {
        "an8flower": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def model_card(
    architecture: str | ModelSpec,
    num_classes: int,
    input_size: Sequence[int],
    dataset: dict[str, Any],
    accuracy: dict[str, float],
    seed: int,
    config: TrainConfig | None = None,
    history: list[dict[str, float]] | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The model card stored in a checkpoint: a JSON-serialisable dict.

    Args:
        architecture: the model's name in :func:`~an8flower.eval.models.build_model` (or its
            :class:`~an8flower.eval.models.ModelSpec`); the card records the canonical name, with
            its options, as ``architecture`` and the spec's code identity (library, version,
            builder, every option) as ``model``, from which
            :func:`~an8flower.eval.models.load_checkpoint` rebuilds it.
        num_classes: number of logits.
        input_size: ``(channels, height, width)`` the model was trained on.
        dataset: what it was trained on, e.g. ``{"name": "an8flower", "variant": "single-6c",
            "manifest_hash": ..., "spec_hash": ..., "seed": 0, "sizes": {"train": 600, ...}}``.
        accuracy: top-1 accuracy per split (``{"train": ..., "val": ..., "test": ...}``).
        seed: the training seed.
        config: the training settings.
        history: per-epoch loss and accuracies.
        classes: class names, index = label.

    Returns:
        The card; ``json.dumps`` of it always succeeds (NaN accuracies become ``None``).
    """
    from an8flower.eval.models import resolve_model

    spec = resolve_model(architecture)
    card = {
        "architecture": spec.name,
        "model": spec.identity(),
        "num_classes": int(num_classes),
        "classes": list(classes) if classes is not None else None,
        "input_size": [int(v) for v in input_size],
        "dataset": dataset,
        "accuracy": {k: (None if v is None or math.isnan(v) else round(float(v), 6)) for k, v in accuracy.items()},
        "seed": int(seed),
        "training": asdict(config) if config is not None else None,
        "history": [{k: round(float(v), 6) for k, v in h.items()} for h in history] if history else [],
        "versions": software_versions(),
    }
    json.dumps(card, allow_nan=False)  # fail here, not when a user reads the card
    return card


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, card: dict[str, Any]) -> None:
    """Write ``{"state_dict", "model_card"}`` to ``path`` atomically (temporary file, then rename;
    the file mode follows the umask).

    The state dict is saved from the CPU so the checkpoint loads on any device.
    """
    from an8flower.atomic import atomic_writer, reporting_disk_full
    from an8flower.errors import DiskFullError

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    try:
        with reporting_disk_full(path, lambda: sum(t.numel() * t.element_size() for t in state.values())):
            os.makedirs(folder, exist_ok=True)
            with atomic_writer(path) as fh:
                torch.save({"state_dict": state, "model_card": card}, fh)
    except DiskFullError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def read_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a checkpoint; :class:`~an8flower.errors.UsageError` naming ``path`` if none."""
    from an8flower.eval.models import check_model_card, read_checkpoint

    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    card = ckpt.get("model_card") if isinstance(ckpt, dict) else None
    if not isinstance(card, dict):
        raise UsageError(f"weights file {path} has no model card")
    check_model_card(card, path, ckpt.get("state_dict"))
    return card


def resolve_device(name: str | None) -> torch.device:
    """The torch device ``--device`` names; ``None``: CUDA when available, else the CPU.

    Raises:
        UsageError: a name torch does not know, naming ``--device``.
    """
    if name:
        try:
            return torch.device(name)
        except RuntimeError as exc:
            raise UsageError(f"--device {name!r}: {exc}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_checkpoint(model_name: str, out: str | os.PathLike[str], *, variant: str | None = None,
                     data: str | None = None, size: int = BOARD_SIZE, per_class: int = BOARD_PER_CLASS,
                     seed: int = 0, workers: int = 0, device: str | None = None,
                     settings: dict[str, Any] | None = None,
                     model_options: dict[str, dict[str, Any]] | None = None,
                     weights: str | os.PathLike[str] | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``model_name`` on an an8Flower variant and write its checkpoint with a model card to ``out``.

    The data is ``variant`` rendered in memory (``size`` px, ``per_class`` images per class, split
    70/10/20 as ``an8flower generate`` does) or the generated folder ``data``. Training follows
    :func:`train` with the model family's recipe (:func:`recipe_config`: ``TRAIN_DEFAULTS``, flips,
    :data:`RECIPES`), ``settings`` (fields of :class:`TrainConfig`) over them; the test split is
    scored after. ``model_options`` (``{MODEL: {KEY: VALUE}}``) are the model builder's options;
    ``weights`` a local state dict, checkpoint or ``.safetensors`` file to fine-tune from (its file
    name and SHA-256 go into the card as ``initialised_from``; the
    classifier head is re-initialised when its shape differs); nothing is downloaded.

    Returns:
        A summary: checkpoint, architecture, variant, epochs run, best epoch, accuracy per split,
        seconds, and ``warning`` (:func:`accuracy_warning` of the test accuracy, or None).

    Raises:
        UsageError: an unknown model, a bad count (naming its flag), a missing ``data`` folder.
    """
    try:
        spec = resolve_model(fold_model_options([model_name], model_options or {})[0])
    except UsageError as exc:
        raise UsageError(f"--model: {exc}") from None
    if data is not None and not os.path.isdir(data):
        raise UsageError(f"--data: no such folder: {data}")
    key = variant or "data"
    flags = {"variants": [key], "size": size, "per_class": per_class, "seed": seed, "workers": workers,
             "device": device}
    config = build_run_config(flags=flags, data=[f"{key}={data}"] if data is not None else ())
    tconf = recipe_config(spec, settings, seed=seed, workers=workers, hflip=True)
    prepared = prepare_an8flower(key, config)
    torch_device = resolve_device(device)
    model = build_model(spec, len(prepared.classes), seed=seed, weights=weights, finetune=True)
    if log is not None:
        log(f"training {spec.name} on {prepared.variant} ({len(prepared.train)} train / {len(prepared.val)} val "
            f"images, {prepared.size} px) on {torch_device}")
    result = train(model, prepared.train, prepared.val, tconf, device=torch_device)
    test_acc = evaluate(result.model, prepared.test)
    card = model_card(
        spec, len(prepared.classes), (3, prepared.size, prepared.size),
        {"name": prepared.dataset, "variant": prepared.variant, "hash": prepared.hash, "source": prepared.source,
         **prepared.info},
        {"train": result.train_accuracy, "val": result.val_accuracy, "test": test_acc},
        seed=seed, config=tconf, history=result.history, classes=prepared.classes,
    )
    if weights is not None:  # provenance: the card says the training did not start from scratch
        with open(weights, "rb") as fh:
            card["initialised_from"] = {"file": os.path.basename(os.fspath(weights)),
                                        "sha256": hashlib.sha256(fh.read()).hexdigest()}
    save_checkpoint(out, result.model, card)
    return {"checkpoint": os.fspath(out), "architecture": spec.name, "variant": prepared.variant,
            "epochs": len(result.history), "best_epoch": result.best_epoch, "accuracy": card["accuracy"],
            "seconds": round(result.seconds, 1), "warning": accuracy_warning(test_acc)}
