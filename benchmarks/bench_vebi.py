"""VEBI cost: fit time on a training split, and explanation images/s beside guided backprop.

* ``test_fit``: :meth:`VEBI.fit` (feature pass over the training images and the mu-lasso, mu = 5)
  on the training split of ``double-12c`` rendered at 64 px with 300 samples per class (2,520
  training images, the published leaderboard's setting), ``small-cnn`` with random weights
  (seeded), batch 128. Rendering is not timed. The lasso's iterations and its feature count are
  printed with the time.
* ``test_explain``: images/s of VEBI's explanation (k = 3, stride fix on, guided ReLU rule) and of
  the ``guided_backprop`` explainer on the same batch, through the public protocol: ``small-cnn``
  at 112 px (batch 16) and VGG16 at 224 px (batch 4), random weights. VEBI's state there is a
  seeded random non-negative weight matrix with 20 relevant features per class spread over every
  default layer, so every image gets k = 3 features (the cost of the explanation, not of the fit).
  Target: VEBI >= 1/3 of guided backprop's throughput.

Device: ``AN8FLOWER_BENCH_DEVICE`` (default: CUDA if available, else CPU). Run::

    python -m pytest benchmarks/bench_vebi.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import time

import pytest
import torch
from _bench_common import DEVICE, NUM_CLASSES, random_setting, sync
from torch.utils.data import DataLoader

from an8flower.baselines import VEBI, build_explainer
from an8flower.baselines.features import LayerRecorder, channel_energy, default_layers
from an8flower.eval.models import build_model

SETTINGS = {"small-cnn": (112, 16), "vgg16": (224, 4)}  # model: (image size, batch)
RATES: dict[tuple[str, str], float] = {}


def test_fit(benchmark) -> None:
    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import prepare_an8flower

    config = RunConfig(variants=["double-12c"], size=64, per_class=300, seed=0)
    data = prepare_an8flower("double-12c", config, progress=False)
    model = build_model("small-cnn", len(data.classes), seed=0).eval().to(DEVICE)
    loader = DataLoader(data.train, batch_size=128, shuffle=False)
    fitted: list[VEBI] = []

    def fit() -> None:
        fitted.append(VEBI(mu=5.0).fit(model, loader, progress=False))
        sync()

    benchmark.pedantic(fit, rounds=2, iterations=1)
    info = fitted[-1].fit_info_
    benchmark.extra_info.update(info)
    print(f"\nvebi fit on {len(data.train)} double-12c training images (64 px, small-cnn, {DEVICE}): "
          f"best {benchmark.stats.stats.min:.2f} s; {info['n_features']} features, "
          f"{info['lasso_iterations']} lasso iterations, converged {info['lasso_converged']}, "
          f"relevant per class {info['relevant_per_class']}")


def _random_state(model: torch.nn.Module, images: torch.Tensor) -> VEBI:
    layers = default_layers(model, images)
    with torch.no_grad(), LayerRecorder(model, layers, reduce=channel_energy) as rec:
        model(images[:1])
        sizes = [int(e.shape[1]) for e in rec.collect()]
    gen = torch.Generator().manual_seed(0)
    m = sum(sizes)
    weights = torch.zeros(m, NUM_CLASSES)
    for c in range(NUM_CLASSES):
        rows = torch.randperm(m, generator=gen)[:20]
        weights[rows, c] = torch.rand(20, generator=gen) + 0.1
    return VEBI(k=3).set_weights(layers, sizes, weights)


@pytest.mark.parametrize("method", ["guided_backprop", "vebi"])
@pytest.mark.parametrize("model_name", list(SETTINGS))
def test_explain(benchmark, model_name: str, method: str) -> None:
    size, batch = SETTINGS[model_name]
    model, images, targets = random_setting(model_name, size, batch)
    explainer = _random_state(model, images) if method == "vebi" else build_explainer(method)

    def call() -> None:
        explainer(model, images, targets)
        sync()

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    benchmark.group = f"vebi-{model_name}"
    benchmark.pedantic(call, rounds=3 if first < 30 else 1, iterations=1)
    RATES[(model_name, method)] = batch / min(first, benchmark.stats.stats.min)
    if method == "vebi" and (model_name, "guided_backprop") in RATES:
        ratio = RATES[(model_name, "vebi")] / RATES[(model_name, "guided_backprop")]
        benchmark.extra_info["ratio_to_guided_backprop"] = ratio
        print(f"\n{model_name} {size} px batch {batch} on {DEVICE}: vebi (k=3) {RATES[(model_name, 'vebi')]:.1f} img/s, "
              f"guided backprop {RATES[(model_name, 'guided_backprop')]:.1f} img/s, ratio {ratio:.2f} (target >= 0.33)")
