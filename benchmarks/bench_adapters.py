"""Adapter overhead: each adapter against the direct library call on the same batch, timed alternately.

For a representative method of each family (Captum Saliency, IntegratedGradients, DeepLift;
Zennit EpsilonPlusFlat; pytorch-grad-cam GradCAM, ScoreCAM) on the package's small CNN at 64 px
(batch 32, the leaderboard's size) and ResNet18 at 64 px (batch 16), random weights, on
``AN8FLOWER_BENCH_DEVICE`` (default: CUDA if available, else CPU):

* ``adapter``: ``build_explainer("captum:Saliency")(model, images, targets)``, the public protocol
  (input checks, eval mode, the call guard, the channel reduction);
* ``direct``: the library called as its documentation writes it, followed by the same channel
  reduction (what a user of the library would write to get our heatmaps).

The two are called alternately (adapter, direct, adapter, ...), so that a shared machine's drifts
hit both alike; the overhead is ``adapter / direct - 1`` (target <= 5%), from the best time of each
and from the median of the paired ratios (each adapter call over the direct call after it). On a
shared machine both drift by more than the overhead, so the summary also times what the adapter
adds around the library call on its own (input checks with their one-image forward pass, eval
mode, the call guard, the seeding): a bound of the overhead that the noise does not blur. The ``summary`` fixture prints the table, and the number of methods the published
board gets (our explainers plus :data:`~an8flower.baselines.adapters.BOARD_ADAPTERS`). Run::

    python -m pytest benchmarks/bench_adapters.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _bench_common import DEVICE, random_setting, sync

from an8flower.baselines import build_explainer, list_explainers, reduce_channels
from an8flower.baselines.adapters import BOARD_ADAPTERS, library_call, seeded
from an8flower.baselines.base import check_inputs, eval_mode
from an8flower.eval.models import DEFAULT_CAM_LAYER

SETTINGS = {"small-cnn": (64, 32), "resnet18": (64, 16)}  # model: (image size, batch)
ROUNDS = {"captum:Saliency": 60, "captum:IntegratedGradients": 6, "captum:DeepLift": 40,
          "zennit:EpsilonPlusFlat": 40, "gradcam:GradCAM": 60, "gradcam:ScoreCAM": 3}
OPTIONS = {"captum:IntegratedGradients": {"n_steps": 16, "internal_batch_size": 256}}
#: (model, method) -> (best adapter time, best direct time, median of the paired ratios adapter / direct)
RESULTS: dict[tuple[str, str], tuple[float, float, float]] = {}
#: (model, method) -> best time of what the adapter adds around the library call, alone
WRAPPING: dict[tuple[str, str], float] = {}


def _wrapping_cost(model, images, targets, quiet: bool, rounds: int = 50) -> float:
    """The adapter's own work around the library call: the protocol's input checks (one forward
    pass of the first image), eval mode, the call guard and the seeding, timed without the call."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        with eval_mode(model):
            check_inputs(model, images, targets)
            with library_call(model, quiet_stderr=quiet), seeded(0, images.device):
                pass
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _direct(name: str, model_name: str) -> Callable:
    """The library's own call for adapter ``name``, plus our channel reduction."""
    layer = DEFAULT_CAM_LAYER[model_name]
    if name.startswith("captum:"):
        import captum.attr

        cls = getattr(captum.attr, name.split(":")[1])
        reduction = {"captum:Saliency": "abs_max"}.get(name, "abs_sum")
        call = {"baselines": 0.0, **OPTIONS.get(name, {})} if name != "captum:Saliency" else {}

        def run(model, images, targets):
            x = images.clone().requires_grad_(True)
            return reduce_channels(cls(model).attribute(x, target=targets, **call).detach(), reduction)

        return run
    if name == "zennit:EpsilonPlusFlat":
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat, MixedComposite, NameMapComposite
        from zennit.rules import Pass

        from an8flower.baselines.adapters.zennit import SplitReLUBlockCanonizer

        def run(model, images, targets):
            # our ResNets need the split-ReLU block canonizer (see the adapter's docstring)
            canonizers = [SequentialMergeBatchNorm()] + ([SplitReLUBlockCanonizer()] if "resnet" in model_name else [])
            composite = MixedComposite([NameMapComposite([(("normalize", "features.normalize"), Pass())]),
                                        EpsilonPlusFlat(canonizers=canonizers)])
            with Gradient(model, composite) as attr:
                _, rel = attr(images.clone().requires_grad_(True),
                              lambda out: F.one_hot(targets, out.shape[1]).to(out) * out)
            return reduce_channels(rel.detach(), "sum")

        return run
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, name.split(":")[1])

    def run(model, images, targets):
        with contextlib.redirect_stderr(io.StringIO()):  # ScoreCAM's progress bars, as the adapter
            with cls(model, [model.get_submodule(layer)]) as cam:
                out = cam(images, [ClassifierOutputTarget(int(t)) for t in targets])
        model.zero_grad(set_to_none=True)  # it accumulates parameter gradients
        return torch.from_numpy(out)

    return run


@pytest.fixture(scope="module", params=list(SETTINGS))
def setting(request: pytest.FixtureRequest):
    name = request.param
    return (name, *random_setting(name, *SETTINGS[name]))


@pytest.mark.parametrize("name", list(ROUNDS))
def test_adapter_overhead(benchmark, setting, name: str) -> None:
    pytest.importorskip({"captum": "captum", "zennit": "zennit", "gradcam": "pytorch_grad_cam"}[name.split(":")[0]])
    model_name, model, images, targets = setting
    layer = {"layer": DEFAULT_CAM_LAYER[model_name]} if name.startswith("gradcam:") else {}
    adapter = build_explainer(name, **OPTIONS.get(name, {}), **layer)
    direct = _direct(name, model_name)
    a, d = adapter(model, images, targets), direct(model, images, targets)  # warm-up; the same maps
    torch.testing.assert_close(a.cpu(), d.float().cpu(), rtol=1e-4, atol=1e-5 * float(d.abs().max()))
    best = {"adapter": float("inf"), "direct": float("inf")}
    ratios = []
    for _ in range(ROUNDS[name]):
        took = {}
        for side, fn in (("adapter", adapter), ("direct", direct)):
            t0 = time.perf_counter()
            fn(model, images, targets)
            sync()
            took[side] = time.perf_counter() - t0
            best[side] = min(best[side], took[side])
        ratios.append(took["adapter"] / took["direct"])
    RESULTS[(model_name, name)] = (best["adapter"], best["direct"], statistics.median(ratios))
    WRAPPING[(model_name, name)] = _wrapping_cost(model, images, targets, quiet=name.startswith("gradcam:"))
    benchmark.group = f"adapters-{model_name}"
    benchmark.extra_info.update(adapter_s=best["adapter"], direct_s=best["direct"],
                                overhead=best["adapter"] / best["direct"] - 1)
    benchmark.pedantic(adapter, args=(model, images, targets), rounds=1, iterations=1)


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    lines = [f"device: {DEVICE}; best of alternating calls; overhead = adapter / direct - 1 (target <= 5%)"]
    for model_name, (size, batch) in SETTINGS.items():
        lines.append(f"{model_name} at {size} px, batch {batch}:")
        for name in ROUNDS:
            if (model_name, name) in RESULTS:
                a, d, paired = RESULTS[(model_name, name)]
                w = WRAPPING[(model_name, name)]
                lines.append(f"  {name:28s} adapter {a * 1e3:9.1f} ms  direct {d * 1e3:9.1f} ms  "
                             f"overhead {100 * (a / d - 1):+6.1f}% (best), {100 * (paired - 1):+6.1f}% "
                             f"(median of {ROUNDS[name]} paired calls); wrapping alone {w * 1e3:.2f} ms "
                             f"= {100 * w / d:.1f}% of direct")
    ours = list_explainers()
    lines.append(f"methods on the published board: {len(ours)} ours (the oracle included) + {len(BOARD_ADAPTERS)} "
                 f"adapters = {len(ours) + len(BOARD_ADAPTERS)} rows")
    print("\n" + "\n".join(lines))
