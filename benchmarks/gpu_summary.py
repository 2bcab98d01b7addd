"""One Markdown table of what ``benchmarks/gpu_check.sh`` measured (read from its output folder).

    python benchmarks/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import os
import sys


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def main(out: str) -> str:
    rows = [("device", _read(os.path.join(out, "gpu.txt")) or "CPU (smoke run)", "")]
    agreement = _read(os.path.join(out, "agreement.txt")).splitlines()
    rows.append(("CPU vs CUDA agreement tests", agreement[-1] if agreement else "not run", "all pass"))
    try:
        with open(os.path.join(out, "explainers.json"), encoding="utf-8") as fh:
            bench = json.load(fh)["benchmarks"]
    except (OSError, ValueError, KeyError):
        bench = []
    rate, extra = {}, {}
    for b in bench:
        name = b["name"].split("[", 1)[1].rstrip("]")
        model, method = name.split("-", 1)
        rate[method] = b["extra_info"].get("images_per_s", float("nan"))
        extra[method] = b["extra_info"]
    if rate:
        model = bench[0]["name"].split("[", 1)[1].split("-", 1)[0]
        fb = rate.get("forward_backward", float("nan"))
        rows.append((f"forward+backward, {model}", f"{fb:,.1f} images/s", "the floor"))
        for m in ("gradient", "input_x_gradient", "guided_backprop", "deconvnet"):
            if m in extra:
                rows.append((f"{m} vs Captum (timed alternately)", f"{extra[m].get('ratio_to_captum_interleaved', float('nan')):.3f}x",
                             ">= 0.90x"))
        if "gradcam_pp" in rate:
            rows.append(("Grad-CAM++ vs one forward+backward", f"{rate['gradcam_pp'] / fb:.3f}x", ">= 0.80x"))
            if "pytorch_grad_cam_pp" in rate:
                rows.append(("Grad-CAM++ vs pytorch-grad-cam", f"{rate['gradcam_pp'] / rate['pytorch_grad_cam_pp']:.2f}x",
                             "about 4x"))
        if "rise" in rate and "rise_per_image" in rate:
            rows.append(("RISE batched vs a per-image loop", f"{rate['rise'] / rate['rise_per_image']:.2f}x", ">= 5x"))
        for m in sorted(rate):
            if m not in ("forward_backward",):
                rows.append((f"  {m}", f"{rate[m]:,.1f} images/s", ""))
    board = os.path.join(out, "board", "run.json")
    try:
        with open(board, encoding="utf-8") as fh:
            run = json.load(fh)
        rows.append(("board wall time", f"{run['timings']['wall_seconds']:.0f} s "
                     f"({run['cells']['computed']} cells, {run['platform'].get('cuda') or run['platform']['device']})", ""))
        for m in run["models"]:
            acc = next(iter(m["accuracy"].values()))
            rows.append((f"  {m['variant']} / {m['model']} test accuracy", f"{100 * acc:.1f}%", ">= 95%"))
        seconds = run["timings"]["seconds"]
        rows.append(("  time split", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if v >= 0.5), ""))
    except (OSError, ValueError, KeyError) as exc:
        rows.append(("board", f"not complete ({type(exc).__name__})", ""))
    lines = ["| what | measured | target |", "|:--|--:|:--|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "gpu-check"))
