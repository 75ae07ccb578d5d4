"""How often does serving a request in a batch change its greedy tokens? (issue #33, item 2)

Under the dense prefill a batched row runs the union of its batch's kept heads and channels with its own
masked in, and left-padded; the matmuls then sum in another order than alone, so a near-tie between two
tokens can flip. This runs each prompt alone (a batch of one, as `aapp serve` does on an idle server) and in
batches of `--batch` (aapp.serve.policy.run_batch, the server's own call), greedy, and counts the prompts
whose tokens, decision or kept counts differ, with the first token where they part.

    python experiments/batch_flips.py --model smollm2-135m-instruct --calib calib.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

from aapp.generation import encode
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.provenance import machine, script_command, write_result
from aapp.pruning.engine import prune_model
from aapp.pruning.request import MethodChoice, resolve_method
from aapp.serve.generate import DecodeRequest
from aapp.serve.policy import run_batch
from aapp.serve.schemas import Sampling
from aapp.serve.server import serving_choice


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--methods", default="dense,pp,aapp:dense")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json")
    ap.add_argument("--md")
    args = ap.parse_args(argv)
    half = args.prompts // 2
    texts = [p.text for p in load_prompts("advbench", sample=half, seed=0)
             + load_prompts("xstest-safe", sample=args.prompts - half, seed=0)]
    loaded = load_model(args.model)
    cells = [_cell(loaded, spec, args, texts) for spec in args.methods.split(",")]
    doc = {"command": script_command("batch_flips", argv, "experiments"), "machine": machine(), "args": vars(args),
           "cells": cells}
    table = "\n".join(["| method | prefill | prompts | tokens differ | decision differs | kept differs | "
                       "first differing character (median) |", "|---|---|---:|---:|---:|---:|---:|",
                       *(_row(c) for c in cells)])
    write_result(doc, table, args.json, args.md)
    print(table)
    return doc


def _cell(loaded, spec: str, args, texts: list[str]) -> dict:
    dense = spec == "dense"
    choice = serving_choice(MethodChoice(spec, {}, None if dense else args.ratio, None if dense else args.calib))
    resolved = resolve_method(choice, args.model)
    sampling = Sampling(max_tokens=args.max_tokens)
    ids = [encode(loaded.tokenizer, [t], loaded.device)[0] for t in texts]
    with prune_model(loaded, resolved.method, resolved.options, resolved.calib) as handle:
        alone = [_facts(run_batch(handle, [DecodeRequest(i, sampling)])[0]) for i in ids]
        together = []
        for start in range(0, len(ids), args.batch):
            together += [_facts(r) for r in run_batch(handle, [DecodeRequest(i, sampling)
                                                               for i in ids[start : start + args.batch]])]
    parted = [_first_difference(a[0], b[0]) for a, b in zip(alone, together) if a[0] != b[0]]
    cell = {"method": spec, "prefill": choice.options.get("prefill"), "prompts": len(texts),
            "tokens_differ": len(parted), "decision_differs": sum(a[1] != b[1] for a, b in zip(alone, together)),
            "kept_differs": sum(a[2] != b[2] for a, b in zip(alone, together)), "first_difference": sorted(parted)}
    print(json.dumps(cell), file=sys.stderr, flush=True)
    return cell


def _facts(result) -> tuple:
    outcome, served = result
    a = served.to_json()
    return outcome.text, a["policy"], json.dumps(a["kept"])


def _first_difference(a: str, b: str) -> int:
    """The first character where two texts part (a proxy for the token, the texts being what clients see)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _row(c: dict) -> str:
    first = c["first_difference"]
    median = first[len(first) // 2] if first else "-"
    return (f"| {c['method']} | {c['prefill'] or '-'} | {c['prompts']} | {c['tokens_differ']} | "
            f"{c['decision_differs']} | {c['kept_differs']} | {median} |")


if __name__ == "__main__":
    main()
