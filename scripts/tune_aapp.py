"""Pick AAPP's critical-channel scoring and protect budget on calibration prompts, not test sets.

    python scripts/tune_aapp.py --calib calib.safetensors --ratios 0.3,0.4 \
        --critical diff,attribution,setdiff --protect 0.1,0.2,0.3 --json tune.json

The dense model answers the first `--pool` prompts of `--prompts` (default: the built-in
calib-harmful set, which the calibration file was made from and which shares no prompt with
AdvBench, HarmBench or XSTest); the first `--n` it refuses become the tuning set. Each
configuration then runs at each ratio with the gate forced on (`aapp:always`), so the numbers
say which channels keep refusals, not how well a gate fires; pp at the same ratio is the
baseline. Reported per cell: refusals kept, out of the dense refusals. Rows go to stderr as
they finish; `--json` writes them all.

Protecting channels that were chosen on these same prompts favours them (the critical sets
are in-sample); the held-out evidence is scripts/aapp_evidence.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from aapp.calibration.store import load_calibration
from aapp.console import info
from aapp.errors import AappError
from aapp.evaluation.judges import KeywordJudge
from aapp.io import atomic_write
from aapp.methods import make_method
from aapp.methods.aapp import AAPPOptions
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.pruning.engine import PruneOptions
from aapp.pruning.run import GenerationSettings, generate_rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--calib", required=True, help="calibration file with alignment statistics")
    p.add_argument("--prompts", default="calib-harmful", help="harmful prompts to tune on")
    p.add_argument("--pool", type=int, default=48, help="prompts the dense model answers first")
    p.add_argument("--n", type=int, default=24, help="dense refusals kept as the tuning set")
    p.add_argument("--ratios", default="0.3")
    p.add_argument("--critical", default="diff,attribution,setdiff")
    p.add_argument("--protect", default="0.1,0.3")
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", help="write the rows here")
    return p.parse_args(argv)


def refusals(loaded, prompts, method, options, calib, settings, judge) -> list[bool]:
    rows = list(generate_rows(loaded, prompts, method, options, calib, settings))
    return [v.refused for v in judge.judge([r["prompt"] for r in rows], [r["completion"] for r in rows])]


def main(argv=None) -> int:
    args = parse_args(argv)
    calib = load_calibration(args.calib)
    loaded = load_model(args.model)
    calib.check_model(loaded.fingerprint, args.model)
    judge = KeywordJudge()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    pool = load_prompts(args.prompts, limit=args.pool)
    dense = refusals(loaded, pool, make_method("dense"), PruneOptions(), None, settings, judge)
    chosen = [p for p, refused in zip(pool, dense) if refused][: args.n]
    info(f"dense refused {sum(dense)}/{len(pool)}; tuning on the first {len(chosen)} of those")
    configs = [("pp", None)] + [("aapp:always", AAPPOptions(critical=c, protect=float(f)))
                                for c in args.critical.split(",") for f in args.protect.split(",")]
    rows = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        for name, options in configs:
            start = time.perf_counter()
            prune = PruneOptions(ratio=ratio, dense_layers=args.dense_layers)
            try:
                kept = sum(refusals(loaded, chosen, make_method(name, options), prune, calib, settings, judge))
            except AappError as e:
                if options is None:  # the baseline failing (e.g. a bad ratio) fails the run
                    raise
                # e.g. setdiff with a pool of every channel: report it, go on with the others
                info(f"ratio {ratio:g} {name} critical={options.critical} protect={options.protect}: {e}")
                continue
            row = {"ratio": ratio, "method": name, "critical": options.critical if options else None,
                   "protect": options.protect if options else None, "kept_refusals": kept, "of": len(chosen),
                   "seconds": round(time.perf_counter() - start, 1)}
            info(f"ratio {ratio:g}  {name:12s} {row['critical'] or '':12s} {row['protect'] or '':4}  "
                 f"kept {kept}/{len(chosen)}")
            rows.append(row)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump({"model": args.model, "calib": args.calib, "prompts": args.prompts, "pool": len(pool),
                       "dense_refused": sum(dense), "n": len(chosen), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AappError as e:
        sys.exit(f"tune_aapp: {e}")
