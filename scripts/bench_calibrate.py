"""Speed of `aapp calibrate`'s alignment step beside a plain transformers forward over the same prompts.

    python scripts/bench_calibrate.py --model smollm2-135m-instruct --json calib.json   # BENCHMARKS.md
    python scripts/bench_calibrate.py --e2e --json calib_e2e.json    # and default `calibrate` end to end
    python scripts/bench_calibrate.py --tiny --repeats 1 --warmup 0  # smoke run

Three things are timed, through the shared runner (aapp.timing), alternated within each repeat so
that drift on a shared machine hits them alike:
  forward  the plain model (no hooks) over the harmful, harmless and contrast prompts, in the
           batches calibration uses (the same chat encoding, left padding, `logits_to_keep=1`);
  passes   calibration's prompt passes over the same batches (aapp.methods.aapp.passes.collect_set:
           the hooks that collect site statistics and per-prompt gate features);
  fit      the gates' fit on those features (aapp.methods.aapp.gates.fit_gates: the logistic gate's
           L2 grid x 5 folds of L-BFGS per layer, the other gates' cuts).
The targets (issue #32): passes at most 1.5x forward, fit at most passes. `--e2e` also times
`calibrate` with its defaults once (general text, prompt passes, fit), the number a user waits.

Before timing: the hooked passes must leave the model's logits as the plain forward gives them, and
their gate features must be the plain forward's hidden states averaged over the post-instruction
tokens; the fit's hand-written loss gradient must match autograd's. The JSON row carries the
device, versions, shapes, the load average around the run and the command.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from aapp.calibration.collect import counted_tokens, token_mean
from aapp.console import info
from aapp.generation import encode
from aapp.methods.aapp.calibrate import DEFAULT_CONTRAST, DEFAULT_HARMFUL, DEFAULT_HARMLESS
from aapp.methods.aapp.gates import fit_gates, logistic_loss
from aapp.methods.aapp.passes import collect_set, post_instruction_tokens
from aapp.models.loading import LoadedModel, load_model
from aapp.prompts import load_prompts
from aapp.provenance import machine, script_command, versions, write_result
from aapp.timing import rounds, stopwatch, summary

BATCH = 8  # add_alignment's batch size


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="alias, model directory or .gguf")
    p.add_argument("--tiny", action="store_true", help="a random tiny-qwen2 instead of --model (smoke runs)")
    p.add_argument("--limit", type=int, help="the first N prompts of each set (default: all, as calibrate)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--fit-repeats", type=int, default=1, help="the fit is deterministic CPU work: once is enough")
    p.add_argument("--e2e", action="store_true", help="also time `calibrate` with its defaults, once")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--md", help="write the table here")
    return p.parse_args(argv)


def load(args) -> LoadedModel:
    if args.tiny:
        from aapp.models.loading import tiny_loaded

        return tiny_loaded("tiny-qwen2")
    return load_model(args.model, device=args.device, dtype=args.dtype)


def prompt_sets(limit: int | None) -> dict[str, list[str]]:
    names = (DEFAULT_HARMFUL, DEFAULT_HARMLESS, *DEFAULT_CONTRAST)
    return {n: [p.input for p in load_prompts(n, limit=limit)] for n in names}


@torch.inference_mode()
def plain_forward(loaded: LoadedModel, prompts: list[str], hidden: bool = False):
    """The model alone over calibration's batches: logits [N, V] (and hidden states per batch)."""
    logits, states = [], []
    for i in range(0, len(prompts), BATCH):
        ids, attn = encode(loaded.tokenizer, prompts[i : i + BATCH], loaded.device)
        out = loaded.model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1,
                           output_hidden_states=hidden)
        logits.append(out.logits[:, -1])
        if hidden:
            states.append((out.hidden_states, attn))
    return torch.cat(logits), states


def check(loaded: LoadedModel, prompts: list[str]) -> float:
    """The passes leave the forward as it was and read what it computes; the fit's gradient is
    autograd's. Returns the largest feature difference seen."""
    prompts = prompts[: 2 * BATCH]
    n_post = post_instruction_tokens(loaded.tokenizer)
    plain, states = plain_forward(loaded, prompts, hidden=True)
    hooked_logits = []
    handle = loaded.model.register_forward_hook(lambda m, a, out: hooked_logits.append(out.logits[:, -1]))
    try:
        passed = collect_set(loaded, prompts, BATCH)
    finally:
        handle.remove()
    if not torch.equal(torch.cat(hooked_logits), plain):
        raise SystemExit("check failed: the calibration passes change the model's logits")
    # hidden_states[i] is layer i's block input; the gate feature is its mean over the counted tokens.
    want = torch.cat([torch.stack([token_mean(h, counted_tokens(attn.bool(), f"last:{n_post}"))
                                   for h in hs[: loaded.geometry.num_layers]], dim=1) for hs, attn in states])
    err = float((passed.features - want).abs().max())
    if not torch.allclose(passed.features, want, rtol=1e-5, atol=1e-5):
        raise SystemExit(f"check failed: the gate features differ from the plain forward's by {err:g}")
    gen = torch.Generator().manual_seed(0)
    z, coef = torch.randn(40, 12, generator=gen, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)
    y, w = (torch.rand(40, generator=gen) > 0.5).double(), torch.full((40,), 1 / 40, dtype=torch.float64)
    b = torch.tensor(0.3, dtype=torch.float64)
    value, g_coef, g_b = logistic_loss(z, y, w, 0.1, coef, b)
    c, bb = coef.clone().requires_grad_(), b.clone().requires_grad_()
    with torch.enable_grad():
        ref = (w * torch.nn.functional.binary_cross_entropy_with_logits(z @ c + bb, y, reduction="none")).sum() \
            + 0.05 * c.square().sum()
        ref.backward()
    if not (torch.allclose(value, ref.detach()) and torch.allclose(g_coef, c.grad) and torch.allclose(g_b, bb.grad)):
        raise SystemExit("check failed: the gate fit's loss gradient differs from autograd's")
    return err


def padded_tokens(loaded: LoadedModel, prompts: list[str]) -> int:
    return sum(encode(loaded.tokenizer, prompts[i : i + BATCH], "cpu")[0].numel() for i in range(0, len(prompts), BATCH))


def e2e(args, loaded_name: str) -> float:
    """`calibrate` with its defaults (the CLI's), once: its wall seconds, model loading included."""
    from aapp.pruning.calibrate import CalibrateRequest, calibrate

    with tempfile.TemporaryDirectory() as d, stopwatch(args.device) as lap:
        info(calibrate(CalibrateRequest(model=loaded_name, out=os.path.join(d, "calib.safetensors"),
                                        steps={"aapp": {}}, device=args.device, dtype=args.dtype)))
    return lap.seconds


def run(args) -> dict:
    load_before = os.getloadavg()
    loaded = load(args)
    sets = prompt_sets(args.limit)
    everything = [p for s in sets.values() for p in s]
    err = check(loaded, everything)
    info(f"check passed (features within {err:.1e} of the plain forward's)")
    passes = {}

    def forward():
        for s in sets.values():
            plain_forward(loaded, s)

    def collect():
        passes.update({n: collect_set(loaded, s, BATCH) for n, s in sets.items()})

    def fit():
        h, s = passes[DEFAULT_HARMFUL], passes[DEFAULT_HARMLESS]
        return fit_gates(h, s, None, pairs=tuple(passes[n].features for n in DEFAULT_CONTRAST))

    def timed(fn) -> tuple[float, float]:
        """Wall and process CPU seconds: on a busy machine CPU time is the steadier of the two (it
        leaves out the time the process waited for a core), though with several threads it also
        counts threads spinning at barriers."""
        c0 = time.process_time()
        with stopwatch(args.device) as lap:
            fn()
        return lap.seconds, time.process_time() - c0

    def say(config, t, warm):
        info(f"{'warmup' if warm else 'repeat'}: {config:8s} {t[0]:.2f} s, CPU {t[1]:.2f} s  "
             f"(load {os.getloadavg()[0]:.1f})")

    runs = rounds(["forward", "passes"], lambda c: timed(forward if c == "forward" else collect),
                  warmup=args.warmup, repeats=args.repeats, rotate=True, on_run=say)
    runs.update(rounds(["fit"], lambda c: timed(fit), warmup=0, repeats=args.fit_repeats, on_run=say))
    times = {k: summary([t[0] for t in v]) for k, v in runs.items()}
    cpu = {k: summary([t[1] for t in v]) for k, v in runs.items()}
    med = {k: t["median"] for k, t in times.items()}
    med_cpu = {k: t["median"] for k, t in cpu.items()}
    result = {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device), "machine": machine(), "versions": versions(),
        "shape": {"prompts": {n: len(s) for n, s in sets.items()}, "batch": BATCH,
                  "padded_tokens": padded_tokens(loaded, everything), "layers": loaded.geometry.num_layers,
                  "hidden": loaded.geometry.hidden_size},
        "seconds": times, "cpu_seconds": cpu,
        "passes_over_forward": med["passes"] / med["forward"], "fit_over_passes": med["fit"] / med["passes"],
        "cpu_passes_over_forward": med_cpu["passes"] / med_cpu["forward"],
        "cpu_fit_over_passes": med_cpu["fit"] / med_cpu["passes"],
        "targets": {"passes_over_forward": 1.5, "fit_over_passes": 1.0},
        "repeats": args.repeats, "warmup": args.warmup,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": script_command("bench_calibrate", args.argv),
    }
    if args.e2e:
        result["calibrate_default_s"] = e2e(args, args.model)
        result["load_average"]["after_e2e"] = os.getloadavg()
    return result


def markdown(r: dict) -> str:
    s, c = r["seconds"], r["cpu_seconds"]
    lines = ["| phase | wall s, median (IQR) | CPU s, median | against (wall / CPU) |", "|---|---:|---:|---:|",
             f"| plain forward | {s['forward']['median']:.2f} ({s['forward']['iqr']:.2f}) "
             f"| {c['forward']['median']:.2f} | |",
             f"| prompt passes | {s['passes']['median']:.2f} ({s['passes']['iqr']:.2f}) | {c['passes']['median']:.2f} "
             f"| {r['passes_over_forward']:.2f}x / {r['cpu_passes_over_forward']:.2f}x forward (target <= 1.5x) |",
             f"| gate fit | {s['fit']['median']:.2f} ({s['fit']['iqr']:.2f}) | {c['fit']['median']:.2f} "
             f"| {r['fit_over_passes']:.2f}x / {r['cpu_fit_over_passes']:.2f}x passes (target <= 1x) |"]
    if "calibrate_default_s" in r:
        lines.append(f"| `calibrate`, defaults | {r['calibrate_default_s']:.1f} | (target <= 120 s unloaded) |")
    load = r["load_average"]
    lines.append(f"\n{r['model']}, {r['device']}, {r['dtype']}, {r['machine']['threads']} threads; "
                 f"load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeats < 1 or args.fit_repeats < 1:
        raise SystemExit("--repeats and --fit-repeats must be at least 1")
    result = run(args)
    table = markdown(result)
    write_result(result, table, args.json, args.md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
