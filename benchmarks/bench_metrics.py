"""Localisation metrics: throughput against Quantus, and bounded memory on a 50,000-heatmap stream.

Run::

    python -m pytest benchmarks/bench_metrics.py --benchmark-only -p no:cacheprovider

* Every localisation metric scores 1,000 heatmaps of 224 x 224 (smooth, upsampled random maps;
  box masks); the Quantus metric with the same formula scores the first 100 of them (Quantus takes
  tens of milliseconds per heatmap), in the same run. Rates are heatmaps per second, per process
  CPU second (``time.process_time``, robust on a shared machine) and per wall second (what
  pytest-benchmark reports); the summary table prints at the end, with the ratio ours / Quantus.
* Both run single-threaded (``torch.set_num_threads(1)`` for the duration of the module; Quantus
  is NumPy code), so the ratio compares algorithms, not core counts.
* ``test_stream_50k_memory`` streams 50,000 heatmaps (10 GB as float32) in batches of 500 through
  four metrics and the PxAP accumulator and reports the peak resident memory above the starting
  point (Linux: ``/proc/self/status`` VmHWM after resetting it through ``/proc/self/clear_refs``).
  It also measures the peak of one 1,000-heatmap call with default chunking against a single
  unchunked call.

* The table is headed by the machine it was measured on: CPU model and count, NumPy version, the
  SIMD targets NumPy dispatches to (as ``numpy.show_runtime()`` lists them) and the sort kernel
  pixel AUC chose (``np.sort`` or the radix sort, see ``an8flower.eval.metrics._ranks``). NumPy's
  sort and partition differ most between machines: to measure a machine without AVX-512 on one
  that has it, run with ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"`` (NumPy 2.4
  names; older NumPy calls them ``AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL
  AVX512_SPR``), and without AVX2 as well by adding ``X86_V3``; the header shows what took effect
  (NumPy warns about names it does not dispatch and ignores them).

Environment: ``AN8_BENCH_N`` (default 1000), ``AN8_BENCH_QUANTUS_N`` (100), ``AN8_BENCH_STREAM_N``
(50000) change the sizes.
"""

from __future__ import annotations

import gc
import os
import platform
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from an8flower.eval import metrics as M
from an8flower.eval.metrics import _ranks

N = int(os.environ.get("AN8_BENCH_N", "1000"))
N_QUANTUS = int(os.environ.get("AN8_BENCH_QUANTUS_N", "100"))
N_STREAM = int(os.environ.get("AN8_BENCH_STREAM_N", "50000"))
SIZE = 224
STREAM_BATCH = 500

OURS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "pointing_game": M.pointing_game,
    "pointing_game (tolerance 15 px)": lambda h, m: M.pointing_game(h, m, tolerance=15),
    "energy_pointing_game": M.energy_pointing_game,
    "relevance_mass_accuracy": M.relevance_mass_accuracy,
    "relevance_rank_accuracy": M.relevance_rank_accuracy,
    "top_k_intersection (k=1000)": lambda h, m: M.top_k_intersection(h, m, k=1000),
    "pixel_auc": M.pixel_auc,
    "iou_auc (19 thresholds)": M.iou_auc,
    "iou_top_mask": M.iou_top_mask,
    "pixel_average_precision": M.pixel_average_precision,
}

#: Quantus metric with the same formula (constructor name, kwargs).
QUANTUS: dict[str, tuple[str, dict]] = {
    "pointing_game": ("PointingGame", {}),
    "energy_pointing_game": ("AttributionLocalisation", {}),
    "relevance_mass_accuracy": ("RelevanceMassAccuracy", {}),
    "relevance_rank_accuracy": ("RelevanceRankAccuracy", {}),
    "top_k_intersection (k=1000)": ("TopKIntersection", {"k": 1000}),
    "pixel_auc": ("AUC", {}),
}

CASES = [(name, "an8flower") for name in OURS] + [(name, "quantus") for name in QUANTUS]

#: (metric, implementation) -> (heatmaps per call, best CPU seconds, best wall seconds)
RESULTS: dict[tuple[str, str], tuple[int, float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` smooth heatmaps (random 7x7 maps upsampled bilinearly, plus faint noise) and box masks."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 7, 7, generator=g)
    heatmaps = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    heatmaps += 1e-3 * torch.rand(n, SIZE, SIZE, generator=g)
    top, left = torch.randint(0, SIZE - 40, (2, n, 1, 1), generator=g)
    height, width = torch.randint(30, 120, (2, n, 1, 1), generator=g)
    rows = torch.arange(SIZE).view(1, SIZE, 1)
    cols = torch.arange(SIZE).view(1, 1, SIZE)
    masks = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return heatmaps, masks


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(N, seed=0)


def quantus_runner(name: str, heatmaps: torch.Tensor, masks: torch.Tensor) -> Callable[[], object]:
    quantus = pytest.importorskip("quantus")
    cls, kwargs = QUANTUS[name]
    metric = getattr(quantus, cls)(disable_warnings=True, **kwargs)
    a = heatmaps[:, None].numpy()
    s = masks[:, None].numpy().astype(np.float32)
    x = np.zeros((a.shape[0], 3, SIZE, SIZE), dtype=np.float32)
    y = np.zeros(a.shape[0], dtype=int)

    def run() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s, batch_size=a.shape[0])

    return run


@pytest.mark.parametrize("name, impl", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_throughput(benchmark, data, name, impl):
    heatmaps, masks = data
    if impl == "quantus":
        count = min(N_QUANTUS, N)
        fn = quantus_runner(name, heatmaps[:count], masks[:count])
        rounds = 2
    else:
        count = N
        ours = OURS[name]

        def fn() -> object:
            return ours(heatmaps, masks)

        rounds = 3
    cpu: list[float] = []
    wall: list[float] = []

    def timed() -> None:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)

    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    benchmark.extra_info.update({"heatmaps": count, "cpu_heatmaps_per_s": count / min(cpu)})
    RESULTS[(name, impl)] = (count, min(cpu), min(wall))


def machine() -> str:
    """The CPU, NumPy's SIMD targets in use, and pixel AUC's sort kernel: the context of the figures."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
    except (OSError, KeyError):
        pass
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as umath
    features = getattr(umath, "__cpu_features__", {})
    found = [t for t in getattr(umath, "__cpu_dispatch__", []) if features.get(t)]
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "")
    line = (
        f"Machine: {model}, {os.cpu_count()} CPUs; NumPy {np.__version__} SIMD baseline "
        f"{' '.join(getattr(umath, '__cpu_baseline__', [])) or '-'}, dispatched {' '.join(found) or 'none'}"
    )
    if disabled:
        line += f" (NPY_DISABLE_CPU_FEATURES={disabled!r})"
    return line + f"; pixel AUC sort kernel: {_ranks.sort_kernel()}"


def summary_table() -> list[str]:
    lines = [
        "",
        machine(),
        f"Localisation metrics on {SIZE}x{SIZE} heatmaps, one thread; heatmaps per second "
        f"(ours on {N}, Quantus on {min(N_QUANTUS, N)}, scaled per heatmap)",
        "",
        "| metric | ours /CPU s | Quantus /CPU s | ratio (CPU) | ours /wall s | Quantus /wall s | ratio (wall) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in OURS:
        if (name, "an8flower") not in RESULTS:
            continue
        n, cpu, wall = RESULTS[(name, "an8flower")]
        row = f"| {name} | {n / cpu:,.0f} |"
        if (name, "quantus") in RESULTS:
            qn, qcpu, qwall = RESULTS[(name, "quantus")]
            row += f" {qn / qcpu:,.1f} | {(n / cpu) / (qn / qcpu):,.0f}x | {n / wall:,.0f} | {qn / qwall:,.1f} |"
            row += f" {(n / wall) / (qn / qwall):,.0f}x |"
        else:
            row += f" - | - | {n / wall:,.0f} | - | - |"
        lines.append(row)
    return lines


@pytest.fixture(scope="module", autouse=True)
def print_summary(request):
    """After the module, print the ours / Quantus table of the throughput tests."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if RESULTS and capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n".join(summary_table()))


# ------------------------------------------------------------------------------------ memory


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _peak_above_start(fn: Callable[[], object]) -> tuple[float, float]:
    """(peak RSS above the RSS at the start, in MB; seconds) of running ``fn``."""
    gc.collect()
    start = _rss_mb("VmRSS")
    _peak_rss_reset()
    t0 = time.perf_counter()
    fn()
    return _rss_mb("VmHWM") - start, time.perf_counter() - t0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to measure peak RSS")
def test_stream_50k_memory(benchmark, data, capsys):
    heatmaps, masks = data
    scores: dict[str, list[torch.Tensor]] = {}
    pxap = M.PixelAveragePrecision()

    def stream() -> None:
        for start in range(0, N_STREAM, STREAM_BATCH):
            n = min(STREAM_BATCH, N_STREAM - start)
            h, m = make_batch(n, seed=1 + start)
            for key, fn in (
                ("pointing_game", M.pointing_game),
                ("relevance_rank_accuracy", M.relevance_rank_accuracy),
                ("pixel_auc", M.pixel_auc),
                ("iou_auc", M.iou_auc),
            ):
                scores.setdefault(key, []).append(fn(h, m))
            pxap.update(h, m)

    peaks: dict[str, tuple[float, float]] = {}

    def run() -> None:
        peaks["stream"] = _peak_above_start(stream)

    benchmark.pedantic(run, rounds=1, iterations=1)
    totals = {k: torch.cat(v) for k, v in scores.items()}
    assert all(t.shape == (N_STREAM,) for t in totals.values())
    value = pxap.compute().item()
    # One call on the 1,000-heatmap batch: default chunks against a single chunk of everything.
    peaks["chunked"] = _peak_above_start(lambda: M.pixel_auc(heatmaps, masks))
    peaks["unchunked"] = _peak_above_start(lambda: M.pixel_auc(heatmaps, masks, chunk_size=heatmaps.shape[0]))
    batch_mb = STREAM_BATCH * SIZE * SIZE * 5 / 2**20  # float32 heatmaps + bool masks
    lines = [
        "",
        f"Streaming {N_STREAM:,} heatmaps of {SIZE}x{SIZE} ({N_STREAM * SIZE * SIZE * 4 / 2**30:.1f} GiB as float32) "
        f"in batches of {STREAM_BATCH} ({batch_mb:.0f} MiB with masks): pointing_game, relevance_rank_accuracy, "
        f"pixel_auc, iou_auc per batch + PxAP accumulator",
        f"  peak RSS above start: {peaks['stream'][0]:.0f} MiB in {peaks['stream'][1]:.0f} s "
        f"({N_STREAM / peaks['stream'][1]:,.0f} heatmaps/s for the five metrics); PxAP = {value:.4f}",
        f"pixel_auc on {heatmaps.shape[0]} heatmaps in one call ({heatmaps.shape[0] * SIZE * SIZE * 4 / 2**20:.0f} MiB input):",
        f"  default chunks: peak {peaks['chunked'][0]:.0f} MiB above start, {peaks['chunked'][1]:.2f} s; "
        f"one chunk: peak {peaks['unchunked'][0]:.0f} MiB, {peaks['unchunked'][1]:.2f} s",
    ]
    benchmark.extra_info.update({k: v[0] for k, v in peaks.items()})
    with capsys.disabled():
        print("\n".join(lines))
    # Bounded: the stream's peak stays within a few batches of data, independent of N_STREAM
    # (the 50,000 heatmaps themselves are 9.3 GiB).
    assert peaks["stream"][0] < 8 * batch_mb, peaks
