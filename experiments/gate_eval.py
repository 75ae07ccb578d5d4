"""How well each AAPP risk gate tells harm from wording, at every layer, on prompts it was not fitted on.

    python experiments/gate_eval.py --calib calib.safetensors --json experiments/results/gate_eval.json --md experiments/results/gate_eval.md

The dense model reads each evaluation set once; every gate in the calibration file is then
scored at every layer from the same features the running gate reads (the mean residual over
the chat template's post-instruction tokens, or a prose window's last tokens). Reported per
gate and layer:
  * AUROC, harmful vs benign, on the mirrored pairs (`mirror-harmful` vs `mirror-benign`: the
    same wording, a harmless object), on jailbreak-wrapped harmful prompts vs the mirrored
    benign ones, and on `--harmful` vs `--benign` (AdvBench / XSTest-safe by default);
  * how often it fires (score past its calibrated threshold): per benign prompt, per all-benign
    batch of `--batch-size` (a batch fires when any prompt does), and per held-out prose window;
  * the layer AAPP would read by default (its rule uses calibration statistics only).
The gates were fitted on aapp's calibration prompts, which share no prompt with these sets.
With `--pruned`, every set is read through Probe Pruning's prefill at `--ratio` (as AAPP's gate
reads a layer after pruned ones: the layers before it select as PP does) and each gate is cut at
its thresholds fitted on pruned features for that ratio (`aapp calibrate --gate-ratios`), or
its dense ones when the file has none (the result says which).
Markdown to stdout (or --md), everything to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from aapp.calibration.run import pack_tokens
from aapp.calibration.store import load_calibration
from aapp.console import info
from aapp.methods.aapp import AAPPOptions
from aapp.methods.aapp.method import gate_layer
from aapp.methods.aapp.gates import GATES, auroc
from aapp.methods.aapp.passes import post_instruction_tokens, prompt_features, window_features
from aapp.methods.aapp.store import alignment
from aapp.methods.plan import make_plan
from aapp.methods.pp import ProbePruning
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.provenance import machine, script_command, write_result
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.text import load_text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--calib", required=True, help="calibration file with alignment statistics")
    p.add_argument("--harmful", default="advbench", help="a further harmful set")
    p.add_argument("--benign", default="xstest-safe", help="a further benign set")
    p.add_argument("--jailbreaks", type=int, default=100, help="jailbreak-wrapped harmful prompts (0: skip)")
    p.add_argument("--limit", type=int, default=None, help="prompts per set (seeded sample)")
    p.add_argument("--prose-windows", type=int, default=32, help="held-out prose windows")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per prose window")
    p.add_argument("--ratio", type=float, default=0.3, help="the plan the default gate layer is chosen under")
    p.add_argument("--pruned", action="store_true", help="read the sets through PP's prefill at --ratio")
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--text", default="builtin")
    p.add_argument("--json")
    p.add_argument("--md")
    return p.parse_args(argv)


def features(loaded, spec, limit, batch_size, seed=0) -> torch.Tensor:
    prompts = load_prompts(spec, sample=limit, seed=seed) if limit else load_prompts(spec)
    info(f"{spec}: {len(prompts)} prompts")
    return prompt_features(loaded, [p.text for p in prompts], post_instruction_tokens(loaded.tokenizer), batch_size)


def thresholds(calib, ratio: float | None) -> tuple[dict[str, torch.Tensor], str]:
    """Each gate's thresholds [L]: those fitted on pruned features at `ratio` when the file holds them
    for every gate, else the dense ones; and which they are."""
    fits = alignment(calib).gates
    pruned = alignment(calib).pruned
    if ratio is not None and pruned is not None and all(pruned.find(n, ratio) is not None for n in fits):
        return {n: pruned.find(n, ratio) for n in fits}, f"pruned@{ratio:g}"
    return {n: f.threshold for n, f in fits.items()}, "dense"


def batch_fire_rate(fires: torch.Tensor, batch_size: int) -> float:
    """Share of consecutive batches of `batch_size` in which any prompt fires."""
    batches = [fires[i : i + batch_size] for i in range(0, len(fires), batch_size)]
    return sum(bool(b.any()) for b in batches) / len(batches)


def evaluate(loaded, calib, sets: dict[str, torch.Tensor], prose: torch.Tensor, batch_size: int,
             default_layers: dict[str, int], cuts: dict[str, torch.Tensor] | None = None) -> list[dict]:
    a = alignment(calib)
    cuts = cuts or {n: f.threshold for n, f in a.gates.items()}
    benign_all = torch.cat([sets["mirror-benign"], sets["benign"]])
    rows = []
    for name, fit in a.gates.items():
        gate = GATES[name]
        scored = {k: gate.scores(v, a.harmful.resid, a.harmless.resid, fit) - cuts[name] for k, v in sets.items()}
        prose_scores = gate.scores(prose, a.harmful.resid, a.harmless.resid, fit) - cuts[name]
        benign_scores = torch.cat([scored["mirror-benign"], scored["benign"]])
        for layer in range(benign_all.shape[1]):
            row = {"gate": name, "layer": layer, "default": layer == default_layers.get(name),
                   "calib_auroc": float(fit.auroc[layer]),
                   "auroc_mirrored": auroc(scored["mirror-harmful"][:, layer], scored["mirror-benign"][:, layer]),
                   "auroc_sets": auroc(scored["harmful"][:, layer], scored["benign"][:, layer]),
                   "fire_harmful_mirrored": float((scored["mirror-harmful"][:, layer] > 0).float().mean()),
                   "fire_benign_prompt": float((benign_scores[:, layer] > 0).float().mean()),
                   "fire_benign_batch": batch_fire_rate(benign_scores[:, layer] > 0, batch_size),
                   "fire_prose_window": float((prose_scores[:, layer] > 0).float().mean())}
            if "jailbreaks" in scored:
                row["auroc_jailbreak"] = auroc(scored["jailbreaks"][:, layer], scored["mirror-benign"][:, layer])
                row["fire_jailbreak"] = float((scored["jailbreaks"][:, layer] > 0).float().mean())
            rows.append(row)
    return rows


def default_gate_layers(loaded, calib, ratio: float, dense_layers: int) -> dict[str, int]:
    """The layer AAPP reads for each gate by default, under the plan at `ratio`."""
    g = loaded.geometry
    plan = make_plan(g, ratio, dense_layers=dense_layers, channel_multiple=PruneOptions.channel_multiple)
    a = alignment(calib)
    return {name: gate_layer(AAPPOptions(gate=name), a, g, plan) for name in a.gates}


def markdown(result: dict) -> str:
    rows = [r for r in result["rows"] if r["default"] or r["layer"] % result["md_every"] == 0]
    jb = "auroc_jailbreak" in result["rows"][0]
    head = ("| gate | layer | AUROC calib (CV for logistic) | AUROC mirrored | " + ("AUROC jailbreak | " if jb else "")
            + "AUROC sets | fires: mirrored harmful | benign prompt | benign batch | prose window |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["gate"], f"{r['layer']}{' (default)' if r['default'] else ''}", f"{r['calib_auroc']:.2f}",
                 f"{r['auroc_mirrored']:.2f}"] + ([f"{r['auroc_jailbreak']:.2f}"] if jb else []) + [
                 f"{r['auroc_sets']:.2f}", f"{r['fire_harmful_mirrored']:.0%}", f"{r['fire_benign_prompt']:.0%}",
                 f"{r['fire_benign_batch']:.0%}", f"{r['fire_prose_window']:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    calib = load_calibration(args.calib)
    calib.check_model(loaded.fingerprint, loaded.name)
    reading = contextlib.nullcontext()
    if args.pruned:  # the gate's view inside AAPP: PP has pruned every layer before the one it reads
        reading = prune_model(loaded, ProbePruning(), PruneOptions(ratio=args.ratio, dense_layers=args.dense_layers),
                              calib)
    with reading:
        sets = {"mirror-harmful": features(loaded, "mirror-harmful", args.limit, args.batch_size),
                "mirror-benign": features(loaded, "mirror-benign", args.limit, args.batch_size),
                "harmful": features(loaded, args.harmful, args.limit, args.batch_size),
                "benign": features(loaded, args.benign, args.limit, args.batch_size)}
        if args.jailbreaks:
            sets["jailbreaks"] = features(loaded, "jailbreaks", args.jailbreaks, max(1, args.batch_size // 4))
        windows = pack_tokens(loaded.tokenizer, load_text(args.text, split="heldout"), args.prose_windows, args.seq_len)
        prose = window_features(loaded, windows, post_instruction_tokens(loaded.tokenizer), args.batch_size)
    layers = default_gate_layers(loaded, calib, args.ratio, args.dense_layers)
    cuts, cut_source = thresholds(calib, args.ratio if args.pruned else None)
    rows = evaluate(loaded, calib, sets, prose, args.batch_size, layers, cuts)
    result = {"model": loaded.name, "fingerprint": loaded.fingerprint, "calib": args.calib,
              "pruned_at": args.ratio if args.pruned else None, "thresholds": cut_source,
              "sets": {k: len(v) for k, v in sets.items()} | {"prose_windows": len(prose)},
              "batch_size": args.batch_size, "default_layers": layers, "md_every": 4, "rows": rows,
              "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "seconds": round(time.perf_counter() - t0, 1), "command": script_command("gate_eval", argv, folder="experiments")}
    table = markdown(result)
    write_result(result, table, args.json, args.md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
