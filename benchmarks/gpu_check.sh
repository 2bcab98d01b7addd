#!/usr/bin/env bash
# The GPU check of the leaderboard at scale, on a machine with one CUDA GPU; under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [OUT]            # OUT: where everything goes (default: gpu-check)
#
# 1. CPU-vs-CUDA agreement: the test suite's CUDA tests (explainers, metrics' torch paths).
# 2. Explainer throughput on VGG16 at 224 px, batch 64, beside Captum's twins of the gradient
#    methods, pytorch-grad-cam's Grad-CAM++ and a per-image RISE loop, in one run.
# 3. A vgg16 + resnet18 board at 112 px on both variants (trained by the run).
# 4. One table of all of it (benchmarks/gpu_summary.py), printed and written to OUT/summary.md.
#
# GPU_CHECK_SMOKE=1 runs the same steps on the CPU at toy sizes (to test this script without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-check}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
if [[ "${GPU_CHECK_SMOKE:-0}" == "1" ]]; then
  DEVICE=cpu; SETTINGS="small-cnn:64:8"; BOARD_SIZE=64; PER_CLASS=10; MAX_IMAGES=8; EPOCHS=1
  EXPLAINERS=(--explainer gradient --explainer gradcam_pp --explainer rise --explainer oracle --metric iou_auc
              --metric pointing_game --option rise.n_masks=64)
  BOARD_MODELS=(--model small-cnn)
  BENCH_FILTER=(-k "forward_backward or gradient or gradcam_pp or (rise and not per_mask)")  # the per-mask loop: minutes on a CPU
else
  DEVICE=cuda; SETTINGS="vgg16:224:64"; BOARD_SIZE=112; PER_CLASS=300; MAX_IMAGES=300; EPOCHS=30
  EXPLAINERS=()
  BOARD_MODELS=(--model vgg16 --model resnet18)
  BENCH_FILTER=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
START=$(date +%s)

echo "== 1. CPU vs CUDA agreement"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_explainers.py tests/test_metrics_localisation.py \
  tests/test_metrics_faithfulness.py -k "cuda or device" 2>&1 | tail -3 | tee "$OUT/agreement.txt" || true

echo "== 2. explainer throughput ($SETTINGS)"
AN8FLOWER_BENCH_DEVICE=$DEVICE AN8FLOWER_BENCH_SETTINGS=$SETTINGS timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
  benchmarks/bench_explainers.py "${BENCH_FILTER[@]}" --benchmark-only --benchmark-json "$OUT/explainers.json" -s 2>&1 \
  | tee "$OUT/explainers.txt" | grep -E "ratio|images/s|^  [a-z_]+ " || true

echo "== 3. board at $BOARD_SIZE px"
T0=$(date +%s)
timeout 300 "$PY" -m an8flower leaderboard --variant single-6c --variant double-12c "${BOARD_MODELS[@]}" \
  "${EXPLAINERS[@]}" --size "$BOARD_SIZE" --per-class "$PER_CLASS" --max-images "$MAX_IMAGES" --epochs "$EPOCHS" \
  --device "$DEVICE" --out "$OUT/board" --quiet > "$OUT/board.md" 2> "$OUT/board.log" || echo "board: see $OUT/board.log"
echo "board wall time: $(( $(date +%s) - T0 )) s" | tee "$OUT/board-time.txt"

echo "== 4. summary"
"$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.md"
echo "gpu_check.sh: $(( $(date +%s) - START )) s in all"
