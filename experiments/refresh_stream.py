"""What AAPP's periodic history refresh (`--refresh N`) does to its gate over a long stream of batches.

    python experiments/refresh_stream.py --calib calib.safetensors --refresh 0,5,20 \
        --stream "xstest-safe:96,mirror-benign:96,advbench:48,mirror-harmful:48" --md refresh.md --json refresh.json

The paper refreshes the gate's harmful/harmless history every 20 batches from the batches it has
just classed, and does not say what that buys. This script measures it. It builds one stream of
batches, each drawn from a single set so that every batch has a label: the sets take turns batch by
batch, in the order given, until each runs out. The stream then runs through AAPP at `--ratio`,
once per `--refresh` value, with one new token per prompt. The gate decides at prefill, so nothing
after it matters here. For every refresh value, and for the first and second halves of the stream,
the script reports how often the gate fired on harmful batches and on benign batches. A refresh
that helps raises the first rate or lowers the second in the second half. One that drifts does the
opposite: the history learns from the gate's own mistakes.

Defaults are chosen on calibration prompts (`calib-harmful`, `calib-harmless`); held-out sets show
whether the choice carries over. Markdown goes to stdout (or --md), everything to --json.
"""

from __future__ import annotations

import argparse
import sys
import time

from aapp.calibration.store import load_calibration
from aapp.console import info
from aapp.errors import AappError, InputError
from aapp.methods import make_method
from aapp.methods.aapp import AAPPOptions
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.provenance import machine, script_command, write_result
from aapp.pruning.engine import PruneOptions
from aapp.pruning.run import GenerationSettings, generate_rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--calib", required=True, help="calibration file with alignment statistics")
    p.add_argument("--stream", default="calib-harmless:96,calib-harmful:96",
                   help="comma list of SET:N (seeded sample of N); each set's prompts need a label")
    p.add_argument("--refresh", default="0,5,20", help="comma list of --refresh values (0: off)")
    p.add_argument("--gate", default=AAPPOptions.gate)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--md", help="write the markdown table here (default: stdout)")
    return p.parse_args(argv)


def build_stream(spec: str, batch_size: int, seed: int) -> list[list]:
    """Batches of one set each, the sets taking turns; a set's last partial batch is dropped so
    every batch is the same size."""
    queues = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, n = item.partition(":")
        prompts = load_prompts(name, sample=int(n) if n else None, seed=seed)
        unlabelled = [p.id for p in prompts if p.label is None]
        if unlabelled:
            raise InputError(f"--stream: {name} has prompts with no harmful/benign label (e.g. {unlabelled[0]})")
        queues.append([prompts[i : i + batch_size] for i in range(0, len(prompts) - batch_size + 1, batch_size)])
    batches = []
    while any(queues):
        for q in queues:
            if q:
                batches.append(q.pop(0))
    return batches


def fire_rates(fired: list[bool], labels: list[str]) -> dict:
    """Fired/total for harmful and for benign batches."""
    out = {}
    for kind in ("harmful", "benign"):
        hits = [f for f, lab in zip(fired, labels) if lab == kind]
        out[kind] = {"fired": sum(hits), "of": len(hits)}
    return out


def run_stream(loaded, calib, batches, refresh: int, args) -> list[bool]:
    """One pass of the stream at `refresh`; whether the gate fired on each batch."""
    method = make_method("aapp", AAPPOptions(gate=args.gate, refresh=refresh))
    settings = GenerationSettings(max_new_tokens=1, batch_size=args.batch_size)
    prompts = [p for b in batches for p in b]
    rows = list(generate_rows(loaded, prompts, method, PruneOptions(ratio=args.ratio, dense_layers=args.dense_layers),
                              calib, settings))
    return [bool(rows[i]["gate"]["fired"]) for i in range(0, len(rows), args.batch_size)]


def rate(cell: dict) -> str:
    return f"{cell['fired']}/{cell['of']}" if cell["of"] else "n/a"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    refreshes = [int(r) for r in args.refresh.split(",")]
    calib = load_calibration(args.calib)
    loaded = load_model(args.model)
    calib.check_model(loaded.fingerprint, args.model)
    batches = build_stream(args.stream, args.batch_size, args.seed)
    labels = [b[0].label for b in batches]
    half = len(batches) // 2
    info(f"{len(batches)} batches of {args.batch_size}: {labels.count('harmful')} harmful, "
         f"{labels.count('benign')} benign")
    t0 = time.perf_counter()
    results = []
    for refresh in refreshes:
        fired = run_stream(loaded, calib, batches, refresh, args)
        results.append({"refresh": refresh, "fired": fired, "all": fire_rates(fired, labels),
                        "first_half": fire_rates(fired[:half], labels[:half]),
                        "second_half": fire_rates(fired[half:], labels[half:])})
        info(f"refresh {refresh}: harmful {rate(results[-1]['all']['harmful'])}, "
             f"benign {rate(results[-1]['all']['benign'])}")
    lines = ["| refresh | fires on harmful batches | on benign batches | harmful, 2nd half | benign, 2nd half |",
             "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['refresh']} | {rate(r['all']['harmful'])} | {rate(r['all']['benign'])} | "
                     f"{rate(r['second_half']['harmful'])} | {rate(r['second_half']['benign'])} |")
    table = "\n".join(lines)
    doc = {"model": args.model, "calib": args.calib, "stream": args.stream, "gate": args.gate, "ratio": args.ratio,
           "batch_size": args.batch_size, "labels": labels, "results": results, "machine": machine(),
           "seconds": round(time.perf_counter() - t0, 1), "command": script_command("refresh_stream", argv, folder="experiments")}
    write_result(doc, table, args.json, args.md)
    if not args.md:
        print(table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AappError as e:
        sys.exit(f"refresh_stream: {e}")
