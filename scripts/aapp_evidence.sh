#!/usr/bin/env bash
# AAPP's evidence table (BENCHMARKS.md): dense, pp and aapp with each risk gate at ratios
# 0.1-0.4 on the real aligned model, judged on AdvBench + HarmBench (refusal, FAR vs dense)
# and XSTest safe (over-refusal), with held-out perplexity and the gate's held-out AUROC.
#
#   scripts/aapp_evidence.sh [OUT]        # N=32 prompts per set: about an hour on 2 CPU cores
#
# Calibration uses the built-in general text and calib-harmful / calib-harmless prompts,
# which share no prompt with the evaluation sets. Rerunning resumes an interrupted sweep.
set -euo pipefail
OUT="${1:-runs/aapp-evidence}"
AAPP="${AAPP:-.venv/bin/aapp}"
PYTHON="${PYTHON:-.venv/bin/python}"
MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
N="${N:-32}"                          # prompts drawn (seeded) from each set
RATIOS="${RATIOS:-0.1,0.2,0.3,0.4}"
METHODS="${METHODS:-dense,pp,aapp:direction,aapp:kl,aapp:always}"
# AdvBench and XSTest are read from the shared data folder beside the checkout.
export AAPP_SHARED_DATA="${AAPP_SHARED_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
mkdir -p "$OUT"

"$AAPP" models pull "$MODEL"
if [ ! -f "$OUT/calib.safetensors" ]; then
  "$AAPP" calibrate --model "$MODEL" --out "$OUT/calib.safetensors"
fi

RESUME=()
[ -d "$OUT/sweep/.partial" ] && RESUME=(--resume)
"$AAPP" eval-refusal --model "$MODEL" --calib "$OUT/calib.safetensors" --methods "$METHODS" \
  --ratios "$RATIOS" --harmful advbench,harmbench --benign xstest-safe --sample "$N" \
  --ppl "builtin:${PPL_WINDOWS:-8}x256" --max-new-tokens "${MAX_NEW_TOKENS:-32}" --batch-size 8 \
  ${EXTRA:-} --out "$OUT/sweep" "${RESUME[@]}"
"$PYTHON" scripts/evidence_table.py "$OUT/sweep/summary.json" > "$OUT/table.md"
echo "evidence: $OUT/table.md (from $OUT/sweep/summary.json)" >&2
