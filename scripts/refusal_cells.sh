#!/usr/bin/env bash
# The large refusal evaluation of issue #15, one resumable cell at a time.
#
#   scripts/refusal_cells.sh OUT CALIB                  # every cell, then the report
#   CELLS="dense@0 pp@0.3" scripts/refusal_cells.sh OUT CALIB
#
# A cell is METHOD@RATIO; each cell x set is one `aapp prune` run written (atomically) to
# OUT/cells/METHOD@RATIO.SET.jsonl, and skipped when that file exists, so a run killed after
# hours resumes at the cell it was in. Cells are independent: cells added later (a new aapp
# option, another ratio) reuse the dense and pp generations already there. `aapp eval-refusal`
# then judges every cell against the dense one (pipe mode) into OUT/report, with McNemar tests
# against pp at each ratio; scripts/ppl_sweep.py adds held-out prose perplexity per cell and
# scripts/evidence_table.py writes OUT/table.md with the issue's targets checked row by row.
#
# Batches are sorted by prompt length (`--sort-by-length`): the in-the-wild jailbreaks are most of
# the run's cost, and as drawn their batches pad to twice their real tokens (sorted: 1.07x). Every pruned
# cell sees the same batches, so pp and aapp stay paired prompt by prompt and batch by batch.
#
# AAPP options go in AAPP_ARGS (e.g. AAPP_ARGS="--gate logistic"), and name the cell with
# TAG (its rows' method becomes aapp-TAG, so several aapp settings can share OUT).
set -euo pipefail
OUT="${1:?usage: refusal_cells.sh OUT CALIB}"
CALIB="${2:?usage: refusal_cells.sh OUT CALIB}"
AAPP="${AAPP:-.venv/bin/aapp}"
PYTHON="${PYTHON:-.venv/bin/python}"
MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
CELLS="${CELLS:-dense@0 pp@0.3 aapp@0.3 pp@0.4 aapp@0.4}"
HARMFUL_N="${HARMFUL_N:-100}"          # drawn (seeded) from each harmful set
SETS="${SETS:-advbench:$HARMFUL_N harmbench:$HARMFUL_N jailbreaks:$HARMFUL_N xstest-safe:250}"
TOKENS="${MAX_NEW_TOKENS:-48}"
export AAPP_SHARED_DATA="${AAPP_SHARED_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
mkdir -p "$OUT/cells"

for cell in $CELLS; do
  method="${cell%@*}"; ratio="${cell#*@}"
  name="$method"
  [ "$method" = aapp ] && [ -n "${TAG:-}" ] && name="aapp-$TAG"
  for entry in $SETS; do
    set_name="${entry%:*}"; n="${entry#*:}"
    file="$OUT/cells/$name@$ratio.$set_name.jsonl"
    [ -f "$file" ] && continue
    echo "cell $name@$ratio on $set_name ($n prompts)" >&2
    extra=()
    [ "$method" = aapp ] && extra=(${AAPP_ARGS:-})
    [ "$method" != dense ] && extra+=(--calib "$CALIB")
    "$AAPP" prune --model "$MODEL" --method "$method" --ratio "$ratio" --input "$set_name" \
      --sample "$n" --seed 0 --max-new-tokens "$TOKENS" --batch-size 8 --sort-by-length "${extra[@]}" --out "$file.tmp" \
      2>> "$OUT/cells/log.txt"
    if [ "$name" != "$method" ]; then  # rename the cell in its rows before it counts as done
      sed "s/\"method\": \"$method\"/\"method\": \"$name\"/" "$file.tmp" > "$file.tmp2" && mv "$file.tmp2" "$file.tmp"
    fi
    mv "$file.tmp" "$file"
  done
done

cat "$OUT"/cells/dense@*.jsonl > "$OUT/dense.jsonl"
cat "$OUT"/cells/*.jsonl | grep -v '"method": "dense"' > "$OUT/pruned.jsonl" || true
"$AAPP" eval-refusal "$OUT/pruned.jsonl" --reference "$OUT/dense.jsonl" --out "$OUT/report"

# Held-out prose perplexity of every pruned cell in OUT (not only this call's CELLS: cells run in
# several sittings share one table), one ppl_sweep per cell, cached in OUT/ppl/METHOD@RATIO.json.
# Tagged aapp cells (aapp-TAG) run with options ppl_sweep cannot take; their perplexity reads n/a.
mkdir -p "$OUT/ppl"
for cell in $(ls "$OUT"/cells/*.jsonl | xargs -n1 basename | sed 's/\.[^.]*\.jsonl$//' | sort -u); do
  method="${cell%@*}"; ratio="${cell#*@}"
  case "$method" in dense|aapp-*) continue ;; esac
  [ -f "$OUT/ppl/$cell.json" ] && continue
  "$PYTHON" scripts/ppl_sweep.py --model "$MODEL" --calib "$CALIB" --methods "$method" --ratios "$ratio" \
    --eval-windows "${PPL_WINDOWS:-16}" --json "$OUT/ppl/$cell.json.tmp" > /dev/null \
    && mv "$OUT/ppl/$cell.json.tmp" "$OUT/ppl/$cell.json"
done
"$PYTHON" scripts/evidence_table.py "$OUT/report/summary.json" --ppl "$OUT"/ppl/*.json \
  --pareto "$OUT/report/refusal_vs_perplexity.png" > "$OUT/table.md"
echo "evidence: $OUT/table.md (from $OUT/report/summary.json and $OUT/ppl/)" >&2
