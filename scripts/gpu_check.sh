#!/usr/bin/env bash
# Every GPU number in one call: kernels checked, kernels timed, end to end, verdicts.
#
#   scripts/gpu_check.sh OUTDIR          # the GPU machine, from the repo root (about 5 minutes on an H200)
#   scripts/gpu_check.sh --dry OUTDIR    # anywhere: tiny shapes on CPU in Triton's interpreter (seconds)
#
# Installs nothing: it runs from the checkout (PYTHONPATH=.) on the torch, triton and transformers
# already there. Steps run in this order and each writes its JSON when it ends, so a time-out
# still leaves the first results; a kernel that disagrees with its torch reference stops the run
# before anything is timed. OUTDIR gets the JSON of each step, gpu_check.json (verdicts, device,
# versions, command) and gpu_check.md (the tables); one verdict line per target goes to stdout.
set -uo pipefail
DRY=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry) DRY=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: scripts/gpu_check.sh [--dry] OUTDIR" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
# kernels/ is imported as aapp_kernels (an install maps it, see pyproject.toml); from a bare checkout
# a link named so does the same.
LINKS="$(mktemp -d)" && ln -s "$(pwd)/kernels" "$LINKS/aapp_kernels" || exit 2
export PYTHONPATH="$(pwd):$LINKS${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
# Seconds per step, so that a hung step still leaves the others time: together within ~8 minutes.
CHECK_TIMEOUT="${CHECK_TIMEOUT:-90}" TIMING_TIMEOUT="${TIMING_TIMEOUT:-150}" E2E_TIMEOUT="${E2E_TIMEOUT:-200}"
KEEP=0.6,0.8

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=(--device cpu)
  K_SHAPES=tiny K_ROWS=1,2048
  E2E=(--shapes tiny-llama,tiny-gemma3 --device cpu --dtype float32 --backend triton --batch 1,2
       --prompt 16 --new 3 --repeats 1 --dense-layers 1)
else
  DEVICE=()
  K_SHAPES=llama2-7b,gemma3-12b K_ROWS=1,8,32,2048
  E2E=(--shapes llama2-7b,gemma3-12b --dtype bfloat16 --batch 1,8 --prompt 512 --new 64 --repeats 3)
fi
echo "$0 $*" > "$OUT/command.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time-out, say how it ended on stderr
  local name="$1" limit="$2"; shift 2
  echo "gpu_check: $name ..." >&2
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "gpu_check: $name: exit $rc after $((SECONDS - start)) s" >&2
  return $rc
}

# 1. Correctness at the real shapes, both half types: nothing is timed unless every kernel agrees.
for dt in bf16 fp16; do
  if ! step "kernels vs torch reference ($dt)" "$CHECK_TIMEOUT" "$PY" scripts/bench_kernels.py "${DEVICE[@]}" --check-only \
      --shapes "$K_SHAPES" --rows "$K_ROWS" --keep "$KEEP" --dtype "$dt" --json "$OUT/kernels-check-$dt.json"; then
    echo "kernels correct ($dt): NO - stopped before timing; the line above names the kernel"
    exit 1
  fi
done

# 2. Kernel timings beside dense cuBLAS and gather-then-matmul, in one process.
step "kernel timings (bf16)" "$TIMING_TIMEOUT" "$PY" scripts/bench_kernels.py "${DEVICE[@]}" --shapes "$K_SHAPES" --rows "$K_ROWS" \
  --keep "$KEEP" --dtype bf16 --json "$OUT/kernels-bf16.json"

# 3. End to end: dense vs pp vs aapp at 0.4, the probe inside the timed prefill.
step "end to end" "$E2E_TIMEOUT" "$PY" scripts/bench_e2e.py "${E2E[@]}" --methods dense,pp,aapp --ratio 0.4 --json "$OUT/e2e.json"

# 4. Verdicts and tables from whatever the steps left.
"$PY" scripts/gpu_report.py "$OUT" $([ "$DRY" = 1 ] && echo --dry)
