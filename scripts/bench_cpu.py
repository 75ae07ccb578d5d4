"""CPU speed of dense vs Probe Pruning on the real default model: prefill and greedy decode.

    python scripts/bench_cpu.py --json bench_cpu.json                  # the BENCHMARKS.md table
    python scripts/bench_cpu.py --tiny --repeats 1 --warmup 0 --decode-steps 3   # smoke run

Pruning must make inference faster, not only smaller. Each run is one batch of `--batch`
rows of exactly `--prompt-len` tokens of held-out prose (no padding), then `--decode-steps`
greedy steps that reuse the KV cache. Prefill is timed from the call to the logits, so the
probe, the selection and the gathering of kept weights are inside it. Dense is the plain
model (no hooks). Configurations are interleaved within each repeat, so drift on a shared
machine hits them alike; medians and IQRs are over repeats. Threads are torch's default.
Process CPU time is recorded beside wall time: on a busy machine with `--threads 1` it is
the steadier measure (it excludes time the process waited to be scheduled), while with
several threads it also counts OpenMP threads spinning at barriers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from aapp.calibration.run import TextSettings, calibrate_text, pack_tokens
from aapp.calibration.store import load_calibration
from aapp.console import info
from aapp.io import atomic_write
from aapp.methods import make_method
from aapp.models.kv_cache import cache_kwarg, new_cache
from aapp.models.loading import LoadedModel, load_model
from aapp.provenance import machine, script_command
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.methods.report import FlopCount
from aapp.text import load_text
from aapp.timing import rounds, summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="alias, model directory or .gguf")
    p.add_argument("--tiny", action="store_true", help="an 8-layer random tiny-qwen2 instead of --model (smoke runs)")
    p.add_argument("--method", default="pp")
    p.add_argument("--ratios", default="0.2,0.4")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=32, help="cached one-token forwards after prefill")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dense-layers", type=int, default=PruneOptions.dense_layers)
    p.add_argument("--calib", help="calibration file; default: calibrate on --calib-windows of the calib split")
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--backend", default="auto", help="pruned matmuls: auto | torch | triton")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice, as benchmarked)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def load(args) -> LoadedModel:
    if args.tiny:
        from aapp.models.adapters import adapter_for
        from aapp.models.loading import fingerprint
        from aapp.models.synthetic import random_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = random_model("tiny-qwen2", layers=8, vocab_size=len(tok))
        adapter = adapter_for(model)
        return LoadedModel("tiny-qwen2-8l", model, tok, adapter, adapter.geometry(model), fingerprint(model))
    return load_model(args.model, device=args.device, dtype=args.dtype)


@torch.inference_mode()
def generate(model, ids: torch.Tensor, steps: int, handle=None) -> dict:
    """One timed batch: prefill with a fresh cache, then `steps` cached greedy one-token forwards."""
    attn = torch.ones_like(ids)
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    cache_arg = {cache_kwarg(model): new_cache(model)}
    t0, c0 = time.perf_counter(), time.process_time()
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, **cache_arg,
                   use_cache=True, logits_to_keep=1).logits
    t1, c1 = time.perf_counter(), time.process_time()
    prefill_flops = _copy(handle.record.flops) if handle is not None else None
    tokens = [logits[:, -1].argmax(-1)]
    t2, c2 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        logits = model(input_ids=tokens[-1][:, None], attention_mask=attn, position_ids=pos,
                       **cache_arg, use_cache=True).logits
        tokens.append(logits[:, -1].argmax(-1))
    t3, c3 = time.perf_counter(), time.process_time()
    out = {"prefill_s": t1 - t0, "decode_s": t3 - t2, "prefill_cpu_s": c1 - c0, "decode_cpu_s": c3 - c2,
           "tokens": torch.stack(tokens, 1)}
    if handle is not None:
        total = handle.record.flops
        out["flops_prefill"] = prefill_flops.fraction
        out["flops_decode"] = FlopCount(total.dense - prefill_flops.dense, total.pruned - prefill_flops.pruned,
                                        total.probe - prefill_flops.probe, total.bias - prefill_flops.bias).fraction
    return out


def _copy(f: FlopCount) -> FlopCount:
    return FlopCount(f.dense, f.pruned, f.probe, f.bias)


def run_config(loaded, ids, steps, method, options, calib) -> dict:
    if method is None:
        return generate(loaded.model, ids, steps)
    with prune_model(loaded, method, options, calib) as handle:
        return generate(loaded.model, ids, steps, handle)


def check(loaded, ids, steps: int) -> None:
    """Before timing: the engine with nothing pruned must give the plain model's tokens exactly."""
    plain = generate(loaded.model, ids, steps)["tokens"]
    wrapped = run_config(loaded, ids, steps, make_method("dense"), PruneOptions(), None)["tokens"]
    if not torch.equal(plain, wrapped):
        raise SystemExit("check failed: the engine's dense path does not reproduce the plain model")


def run(args) -> dict:
    loaded = load(args)
    heldout = load_text("builtin", split="heldout")
    ids = pack_tokens(loaded.tokenizer, heldout, args.batch, args.prompt_len).to(loaded.device)
    if ids.shape[0] < args.batch:
        raise SystemExit(f"held-out text gives only {ids.shape[0]} rows of {args.prompt_len} tokens")
    if args.calib:
        calib = load_calibration(args.calib)
    else:
        info(f"calibrating on {args.calib_windows} windows x {args.prompt_len} tokens of the calib split")
        calib = calibrate_text(loaded, load_text("builtin", split="calib"),
                               TextSettings(samples=args.calib_windows, seq_len=args.prompt_len), "builtin")
    check(loaded, ids, min(3, args.decode_steps))
    ratios = [float(r) for r in args.ratios.split(",")]
    configs = [("dense", 0.0, None, None)] + [
        (args.method, r, make_method(args.method),
         PruneOptions(ratio=r, dense_layers=args.dense_layers, backend=args.backend)) for r in ratios]

    def progress(config, r, warm):
        info(f"{'warmup' if warm else 'repeat'}: {config[0]:6s} r={config[1]:.1f}  "
             f"prefill {r['prefill_s']:.3f} s  decode {r['decode_s']:.3f} s")

    runs = rounds(configs, lambda c: run_config(loaded, ids, args.decode_steps, *c[2:], calib),
                  warmup=args.warmup, repeats=args.repeats, on_run=progress)
    dense_runs = runs[configs[0]]
    rows = []
    for config in configs:
        name, ratio, rs = config[0], config[1], runs[config]
        row = {"method": name, "ratio": ratio,
               "prefill_s": summary([r["prefill_s"] for r in rs]),
               "decode_s": summary([r["decode_s"] for r in rs]),
               "flops_prefill": rs[-1].get("flops_prefill", 1.0), "flops_decode": rs[-1].get("flops_decode", 1.0),
               # How far greedy decoding stays with dense: a cheap sanity signal, not a quality metric.
               "token_agreement": float((rs[-1]["tokens"] == dense_runs[-1]["tokens"]).float().mean())}
        for phase in ("prefill", "decode"):
            row[f"{phase}_cpu_s"] = summary([r[f"{phase}_cpu_s"] for r in rs])
            for kind in ("", "_cpu"):
                key = f"{phase}{kind}_s"
                row[f"{phase}{kind}_speedup"] = statistics.median(r[key] for r in dense_runs) / row[key]["median"]
        rows.append(row)
    return {
        "model": loaded.name, "fingerprint": loaded.fingerprint, "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device), "backend": args.backend,
        "shape": {"batch": args.batch, "prompt_len": args.prompt_len, "decode_steps": args.decode_steps},
        "repeats": args.repeats, "warmup": args.warmup, "dense_layers": args.dense_layers,
        "rows": rows, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": script_command("bench_cpu", args.argv),
    }


def markdown(result: dict) -> str:
    steps = result["shape"]["decode_steps"]
    lines = ["| config | prefill s (IQR) | speedup | decode s (IQR) | ms/step | speedup | FLOPs prefill | FLOPs decode "
             "| CPU-time speedup prefill / decode |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        p, d = r["prefill_s"], r["decode_s"]
        name = "dense" if r["method"] == "dense" else f"{r['method']} {r['ratio']:.1f}"
        lines.append(f"| {name} | {p['median']:.3f} ({p['iqr']:.3f}) | {r['prefill_speedup']:.2f}x "
                     f"| {d['median']:.3f} ({d['iqr']:.3f}) | {1000 * d['median'] / max(1, steps):.1f} "
                     f"| {r['decode_speedup']:.2f}x | {r['flops_prefill']:.3f} | {r['flops_decode']:.3f} "
                     f"| {r['prefill_cpu_speedup']:.2f}x / {r['decode_cpu_speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repeats < 1 or args.decode_steps < 1:
        raise SystemExit("--repeats and --decode-steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        with atomic_write(args.json) as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
