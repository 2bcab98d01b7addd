"""Transformer explainers against one forward + backward pass of the same ViT.

The ``vit-tiny`` preset (torchvision ``VisionTransformer``: 6 blocks x 192, 16 px patches, 3 heads)
at 112 px, batch 16, random weights, on ``AN8FLOWER_BENCH_DEVICE`` (default: CUDA if available,
else the CPU). Each method runs through the public protocol (``explainer(model, images, targets)``,
input checks included). Reference ``forward_backward``: one forward pass and the gradient of the
target logits with respect to the input. Targets: ``vit_rollout`` (one forward, no backward) and
``vit_relevance`` (one forward, one backward to the attention maps) at most about 1.5 reference
passes; ``lxt:AttnLRP`` (one forward and backward through LXT's patched classes), ``gradcam`` and
``torchcam:LeGrad`` are shown for comparison. Methods whose library is missing are skipped.

The module's ``summary`` fixture prints each method's best time and its ratio to the reference at
the end. Run (``-s`` shows the table)::

    python -m pytest benchmarks/bench_transformer.py --benchmark-only --benchmark-min-rounds=3 \\
        -p no:cacheprovider -s
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import pytest
import torch
from _bench_common import random_setting, sync

from an8flower.baselines import build_explainer

SIZE, BATCH = 112, 16
METHODS = ["forward_backward", "vit_rollout", "vit_relevance", "gradcam", "lxt:AttnLRP", "torchcam:LeGrad"]
LIBRARY = {"lxt:AttnLRP": "lxt", "torchcam:LeGrad": "torchcam"}
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setting() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model, images, targets = random_setting("vit-tiny", SIZE, BATCH)
    with torch.no_grad():  # torchvision initialises the head to 0: no gradient would reach the attention
        head = model.net.heads.head
        head.weight.copy_(0.02 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(2)))
    return model, images, targets


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    if "forward_backward" not in RESULTS:
        return
    base = RESULTS["forward_backward"]
    print(f"\nvit-tiny, {SIZE} px, batch {BATCH}: best time and ratio to one forward + backward")
    for name, seconds in RESULTS.items():
        print(f"  {name:18s} {1000 * seconds:8.1f} ms  {seconds / base:5.2f} x")


def forward_backward(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.detach().requires_grad_(True)
        score = model(x).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, x)
        return grad

    return run


@pytest.mark.parametrize("name", METHODS)
def test_transformer_explainer_cost(benchmark, setting, name: str) -> None:
    if name in LIBRARY and importlib.util.find_spec(LIBRARY[name]) is None:
        pytest.skip(f"{LIBRARY[name]} is not installed")
    model, images, targets = setting
    if name == "forward_backward":
        fn = forward_backward(model)
    else:
        explainer = build_explainer(name)
        fn = lambda x, t: explainer(model, x, t)  # noqa: E731
    fn(images, targets)  # warm-up (and the input checks' one-image forward, cached after)
    sync()

    def call() -> None:
        fn(images, targets)
        sync()

    benchmark(call)
    RESULTS[name] = benchmark.stats.stats.min
