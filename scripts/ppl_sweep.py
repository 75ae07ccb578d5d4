"""Held-out perplexity of dense vs pruned models over a grid of ratios.

    python scripts/ppl_sweep.py --json ppl.json                # the BENCHMARKS.md table
    python scripts/ppl_sweep.py --tiny --calib-windows 4 --eval-windows 4 --seq-len 32 --ratios 0.2,0.4
    python scripts/ppl_sweep.py --methods pp,flap,pp:history-only,flap:no-comp --eval-windows 8 --ratios 0.3

`--methods` takes method specs as the registry names them (`aapp methods`): `pp`, `pp+comp`,
`flap`, and the ablations that take PP and FLAP apart (`pp:history-only`, `hybrid:pp-heads`,
`flap:no-comp`, ...). `--full-probe` probes with the whole batch (every sample and position), the
paper's upper bound for PP; the JSON's options say whether it was on.

Calibrates once on the calibration split of the text, then measures perplexity on the
held-out split (disjoint documents) for the dense model and every method x ratio, with the
same engine options as `aapp prune` (first 3 layers dense, kept channels a multiple of 64).
The markdown table goes to stdout, progress to stderr, everything measured to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aapp.calibration.run import TextSettings, calibrate_text, pack_tokens
from aapp.calibration.store import load_calibration, save_calibration
from aapp.console import info
from aapp.evaluation.perplexity import window_perplexity
from aapp.io import atomic_write
from aapp.methods import make_method
from aapp.models.loading import load_model
from aapp.provenance import machine, script_command
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.text import load_text
from aapp.timing import stopwatch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="alias, model directory or .gguf")
    p.add_argument("--tiny", action="store_true", help="a tiny random tiny-qwen2 model instead of --model (smoke runs)")
    p.add_argument("--text", default="builtin", help="'builtin' prose or a text file; split into calib/held-out")
    p.add_argument("--methods", default="pp,wanda-sp,flap")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    p.add_argument("--calib-windows", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--channel-multiple", type=int, default=PruneOptions.channel_multiple)
    p.add_argument("--full-probe", action="store_true", help="probe with every sample and position of the batch")
    p.add_argument("--calib", help="calibration file: read if it exists, else written after calibrating")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def load(args):
    if args.tiny:
        from aapp.models.loading import tiny_loaded

        return tiny_loaded("tiny-qwen2")
    return load_model(args.model, device=args.device, dtype=args.dtype)


def calibration(args, loaded):
    path = Path(args.calib) if args.calib else None
    if path is not None and path.exists():
        info(f"calibration: reading {path}")
        return load_calibration(path)
    info(f"calibration: {args.calib_windows} windows x {args.seq_len} tokens of the calib split")
    cal = calibrate_text(loaded, load_text(args.text, split="calib"),
                         TextSettings(samples=args.calib_windows, seq_len=args.seq_len, batch_size=args.batch_size),
                         description=args.text)
    if path is not None:
        save_calibration(cal, path)
    return cal


def run(args) -> dict:
    loaded = load(args)
    t0 = time.perf_counter()
    cal = calibration(args, loaded)
    windows = pack_tokens(loaded.tokenizer, load_text(args.text, split="heldout"), args.eval_windows, args.seq_len)
    info(f"held-out: {len(windows)} windows x {args.seq_len} tokens")
    rows = []

    def record(method: str, ratio: float, handle=None):
        with stopwatch() as lap:
            res = window_perplexity(loaded, windows, batch_size=args.batch_size, handle=handle)
        row = {"method": method, "ratio": ratio, **res.to_dict(), "seconds": round(lap.seconds, 1)}
        info(f"{method:9s} r={ratio:.2f}  ppl {res.ppl:8.3f}  flops {row['flops_fraction'] or 1.0:.3f}  "
             f"({row['seconds']} s)")
        rows.append(row)

    probe = {"probe_samples": 1.0, "probe_positions": 1.0} if args.full_probe else {}
    record("dense", 0.0)
    for name in args.methods.split(","):
        for ratio in [float(r) for r in args.ratios.split(",")]:
            options = PruneOptions(ratio=ratio, dense_layers=args.dense_layers,
                                   channel_multiple=args.channel_multiple, **probe)
            with prune_model(loaded, make_method(name), options, cal) as handle:
                record(name, ratio, handle)
    return {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device), "text": args.text,
        "calib": {"windows": int(cal.meta.get("samples", args.calib_windows)), "seq_len": cal.meta.get("seq_len")},
        "heldout": {"windows": len(windows), "seq_len": args.seq_len, "tokens": rows[0]["tokens"]},
        "options": {"dense_layers": args.dense_layers, "channel_multiple": args.channel_multiple,
                    "full_probe": args.full_probe},
        "rows": rows, "checks": checks(rows), "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "seconds": round(time.perf_counter() - t0, 1),
        "command": script_command("ppl_sweep", args.argv),
    }


def checks(rows: list[dict]) -> dict:
    """The issue's acceptance: pp rises monotonically with ratio and beats the baselines at 0.3."""
    by = {(r["method"], r["ratio"]): r["ppl"] for r in rows}
    pp = [by[k] for k in sorted(k for k in by if k[0] == "pp")]
    out = {"pp_monotonic": all(a < b for a, b in zip([by[("dense", 0.0)]] + pp, pp))} if pp else {}
    for base in ("wanda-sp", "flap"):
        if ("pp", 0.3) in by and (base, 0.3) in by:
            out[f"pp_beats_{base}_at_0.3"] = by[("pp", 0.3)] < by[(base, 0.3)]
    return out


def markdown(result: dict) -> str:
    """Perplexity per method and ratio; each cell also gives the FLOPs fraction (probe included)."""
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    by = {(r["method"], r["ratio"]): r for r in rows}
    dense = by[("dense", 0.0)]["ppl"]
    lines = ["| ratio | dense | " + " | ".join(f"{m} (FLOPs)" for m in methods) + " |",
             "|---:|---:|" + "---:|" * len(methods)]
    for ratio in sorted({r["ratio"] for r in rows if r["method"] != "dense"}):
        cells = []
        for m in methods:
            r = by.get((m, ratio))
            cells.append("" if r is None else f"{r['ppl']:.2f} ({r['flops_fraction']:.3f})")
        lines.append(f"| {ratio:.1f} | {dense:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    result = run(args)
    if args.json:
        with atomic_write(args.json) as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print()
    print("checks: " + ", ".join(f"{k}={v}" for k, v in result["checks"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
