"""Pick AAPP's options, lever by lever, on calibration prompts, never on test sets.

    python experiments/tune_aapp.py --calib calib.safetensors --ratios 0.3,0.4 \
        --configs "protect=0.3; restore=direction; restore=harmful-mean; protect_by=mass; layer_budget=risk" \
        --json tune.json

Each `;`-separated config is a comma list of AAPPOptions fields set over the defaults
(`protect=0.2,critical=diff`; an empty config is the defaults). The dense model answers the
first `--pool` prompts of `--harmful` (default: the built-in calib-harmful set, which the
calibration file was made from and which shares no prompt with AdvBench, HarmBench or XSTest);
the first `--n` it refuses become the tuning set. It also answers the first `--n` prompts of
`--harmless` (calib-harmless). Every config then runs at every ratio with the gate forced on
(`aapp:always`), so the numbers say what protection costs and buys once a gate has fired, not how
well a gate fires; pp at the same ratio is the baseline. `--gated` runs the real gate instead, to
compare gates and gate options (`gate=logistic`, `per_sample=true`, `refresh=20`) end to end; the
rows then also count the prompts whose gate fired. Per cell:

* kept: tuning-set refusals the pruned model keeps (out of `n`);
* over-refusal: harmless prompts it refuses;
* chat ppl: its perplexity on the dense model's own answers to the harmless prompts, chat
  formatted (the price a benign user pays when the gate fires by mistake);
* FLOPs: (pruned + probe + bias adds) / dense over the harmful batches, and the pruned blocks'
  share alone, which the plan fixes: it must equal pp's.

Rows go to stderr as they finish; `--json` writes them all. Protecting channels that were chosen
on these same prompts favours them (the critical sets are in-sample); the held-out evidence is
`aapp eval-refusal` sweep mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from aapp.calibration.store import load_calibration
from aapp.console import info
from aapp.errors import AappError, InputError
from aapp.evaluation.judges import KeywordJudge
from aapp.methods.options import parse_options
from aapp.evaluation.perplexity import answer_perplexity
from aapp.io import atomic_write
from aapp.methods import make_method
from aapp.methods.aapp import AAPPOptions
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.run import GenerationSettings, generate_rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--calib", required=True, help="calibration file with alignment statistics")
    p.add_argument("--harmful", default="calib-harmful", help="harmful prompts to tune on")
    p.add_argument("--harmless", default="calib-harmless", help="harmless prompts to price protection on")
    p.add_argument("--pool", type=int, default=48, help="harmful prompts the dense model answers first")
    p.add_argument("--n", type=int, default=24, help="dense refusals kept as the tuning set; harmless prompts")
    p.add_argument("--ratios", default="0.3")
    p.add_argument("--configs", default="", help="';'-separated configs, each 'field=value,...' over the defaults")
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--reprobe", type=int, default=0,
                   help="re-pick MLP channels every N decode steps, in every cell (a gate that fired at prefill "
                        "then protects the layers before it too)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gated", action="store_true", help="run the real gate instead of forcing it on")
    p.add_argument("--json", help="write the rows here")
    return p.parse_args(argv)


def parse_configs(text: str) -> list[dict]:
    """'protect=0.2,critical=diff; restore=direction' -> [{'protect': 0.2, 'critical': 'diff'}, {...}]."""
    fields = {f.name: f for f in dataclasses.fields(AAPPOptions)}
    configs = []
    for item in text.split(";"):
        config = {}
        for pair in filter(None, (s.strip() for s in item.split(","))):
            key, sep, raw = pair.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                raise InputError(f"--configs: {pair!r} is not FIELD=VALUE with FIELD one of {', '.join(fields)}")
            # Typed as the options class types it (the parser `--opt` uses).
            config[key] = getattr(parse_options(AAPPOptions, {key: raw.strip()}, "aapp"), key)
        configs.append(config)
    return configs


def judged(loaded, prompts, method, options, calib, settings, judge) -> tuple[list[bool], list[str], dict]:
    """Refusal verdicts, completions, and FLOPs over all the batches as fractions of dense: the
    pruned blocks alone (fixed by the plan), and everything spent (the probe's share varies a
    little with which rows it picks, and so with what earlier layers kept); `fired` counts the
    rows whose gate fired."""
    rows = list(generate_rows(loaded, prompts, method, options, calib, settings))
    verdicts = judge.judge([r["prompt"] for r in rows], [r["completion"] for r in rows])
    total = {k: sum(r["flops"].get(k, 0.0) for r in rows) for k in ("dense", "pruned", "probe", "bias")}
    dense = total["dense"] or 1.0
    fractions = {"pruned": total["pruned"] / dense,
                 "all": (total["pruned"] + total["probe"] + total["bias"]) / dense,
                 "fired": sum(bool(r.get("gate", {}).get("fired")) for r in rows)}
    return [v.refused for v in verdicts], [r["completion"] for r in rows], fractions


def chat_ppl(loaded, method, options, calib, prompts, answers) -> float:
    handle = prune_model(loaded, method, options, calib)
    try:
        return answer_perplexity(loaded, prompts, answers).ppl
    finally:
        handle.remove()


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = parse_configs(args.configs)
    calib = load_calibration(args.calib)
    loaded = load_model(args.model)
    calib.check_model(loaded.fingerprint, args.model)
    judge = KeywordJudge()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    pool = load_prompts(args.harmful, limit=args.pool)
    harmless = load_prompts(args.harmless, limit=args.n)
    dense_refused, _, _ = judged(loaded, pool, make_method("dense"), PruneOptions(), None, settings, judge)
    chosen = [p for p, refused in zip(pool, dense_refused) if refused][: args.n]
    info(f"dense refused {sum(dense_refused)}/{len(pool)}; tuning on the first {len(chosen)} of those")
    harmless_texts = [p.text for p in harmless]
    dense_over, dense_answers, _ = judged(loaded, harmless, make_method("dense"), PruneOptions(), None, settings,
                                          judge)
    info(f"dense refused {sum(dense_over)}/{len(harmless)} harmless prompts")

    aapp = "aapp" if args.gated else "aapp:always"
    cells = [("pp", None)] + [(aapp, AAPPOptions(**c)) for c in configs]
    rows = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        prune = PruneOptions(ratio=ratio, dense_layers=args.dense_layers, reprobe_every=args.reprobe)
        for name, options in cells:
            start = time.perf_counter()
            try:
                method = make_method(name, options)
                kept, _, flops = judged(loaded, chosen, method, prune, calib, settings, judge)
                over, _, benign = judged(loaded, harmless, make_method(name, options), prune, calib, settings, judge)
                ppl = chat_ppl(loaded, make_method(name, options), prune, calib, harmless_texts, dense_answers)
            except AappError as e:
                if options is None:  # the baseline failing (e.g. a bad ratio) fails the run
                    raise
                # e.g. setdiff with a pool of every channel: report it, go on with the others
                info(f"ratio {ratio:g} {name} {describe(options)}: {e}")
                continue
            row = {"ratio": ratio, "method": name, "options": dataclasses.asdict(options) if options else None,
                   "config": describe(options), "kept_refusals": sum(kept), "of": len(chosen),
                   "over_refusals": sum(over), "of_harmless": len(harmless), "chat_ppl": round(ppl, 3),
                   "flops_fraction": round(flops["all"], 4), "pruned_fraction": round(flops["pruned"], 6),
                   "fired_harmful": flops["fired"], "fired_harmless": benign["fired"],
                   "seconds": round(time.perf_counter() - start, 1)}
            info(f"ratio {ratio:g}  {name:12s} {row['config']:40s} kept {sum(kept)}/{len(chosen)}  "
                 f"over {sum(over)}/{len(harmless)}  chat ppl {ppl:.2f}  FLOPs {flops['all']:.3f}  "
                 f"fired {flops['fired']}/{len(chosen)} harmful, {benign['fired']}/{len(harmless)} harmless")
            rows.append(row)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump({"model": args.model, "calib": args.calib, "harmful": args.harmful,
                       "harmless": args.harmless, "pool": len(pool), "dense_refused": sum(dense_refused),
                       "n": len(chosen), "dense_over_refusals": sum(dense_over),
                       "max_new_tokens": args.max_new_tokens, "gated": args.gated, "dense_layers": args.dense_layers,
                       "reprobe": args.reprobe, "rows": rows}, f, indent=2)
    return 0


def describe(options: AAPPOptions | None) -> str:
    """The fields a config sets away from the defaults ('defaults' if none)."""
    if options is None:
        return ""
    base = AAPPOptions()
    changed = [f"{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)
               if getattr(options, f.name) != getattr(base, f.name)]
    return ",".join(changed) or "defaults"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AappError as e:
        sys.exit(f"tune_aapp: {e}")
