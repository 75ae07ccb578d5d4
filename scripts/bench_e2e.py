"""End-to-end speed: dense vs pp vs aapp on LLaMA-2-7B- and Gemma-3-12B-shaped models.

Random bf16 weights with the real shapes (speed depends on shapes, not on training; the
Gemma-3 decoder is the text model of the release), batches 1 and 8, prompt 512, 128 new
tokens, ratio 0.4; the probe, the selection and the weight preparation are inside the
timed prefill. Before timing, each method at ratio 0 must give the plain model's logits, and at
the timed ratio finite logits for fewer FLOPs. Per run it also records peak GPU memory (CUDA) and
the matmul backend.
Prints a table on stderr and writes JSON with device, versions and the command.

    python scripts/bench_e2e.py --shapes llama2-7b,gemma3-12b --json e2e.json      # on a GPU
    python scripts/bench_e2e.py --shapes tiny-llama --batch 2 --prompt 16 --new 4 --dense-layers 1  # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace

import torch

from aapp.calibration.store import Calibration, SiteStats
from aapp.methods.aapp.store import set_random_alignment
from aapp.methods import make_method
from aapp.models.adapters import adapter_for
from aapp.models.loading import LoadedModel, fingerprint
from aapp.io import atomic_write, check_writable
from aapp.models.synthetic import SHAPES, random_model, tiny_tokenizer
from aapp.provenance import machine, script_command
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.timing import rounds, stopwatch, summary


def synthetic_calibration(loaded: LoadedModel, seed: int = 0) -> Calibration:
    """Plausible statistics of the right shapes: speed does not depend on their values."""
    g = loaded.geometry
    gen = torch.Generator().manual_seed(seed)
    L, A, M = g.num_layers, g.num_heads * g.head_dim, g.intermediate_size

    def stats(c: int) -> SiteStats:
        return SiteStats(mean=torch.randn(L, c, generator=gen) * 0.1, sq_mean=torch.rand(L, c, generator=gen) + 0.1)

    cal = Calibration(meta={"fingerprint": loaded.fingerprint, "model": loaded.name}, attn=stats(A), mlp=stats(M))
    set_random_alignment(cal, g, seed)
    return cal


def build(shape: str, device: str, dtype: torch.dtype, layers: int | None) -> LoadedModel:
    tok = tiny_tokenizer()  # prompts are random ids; the vocabulary is the release's (its lm_head is timed)
    vocab = SHAPES[shape].get("vocab") or len(tok)
    model = random_model(shape, dtype=dtype, device=device, layers=layers, vocab_size=vocab)
    adapter = adapter_for(model)
    return LoadedModel(shape, model, tok, adapter, adapter.geometry(model), fingerprint(model))


# Largest |logit - plain logit| allowed at ratio 0, relative to the largest plain logit: the pruned
# forward computes attention itself (SDPA), so only the dtype's rounding may differ (bf16 keeps 8 bits).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@torch.inference_mode()
def check(loaded: LoadedModel, calib: Calibration, methods: list[str], options: PruneOptions, device: str) -> None:
    """Before timing: each method at ratio 0 gives the plain model's logits; at the timed ratio, finite
    logits for fewer FLOPs than dense. A benchmark of a broken forward would time the wrong thing."""
    ids = torch.randint(10, loaded.geometry.vocab_size, (2, 16), device=device,
                        generator=torch.Generator(device=device).manual_seed(1))
    plain = loaded.model(input_ids=ids).logits.float()
    tol = TOLERANCE.get(loaded.dtype, 1e-5) * plain.abs().max().item()
    for name in methods:
        for ratio in dict.fromkeys((0.0, 0.0 if name == "dense" else options.ratio)):
            with prune_model(loaded, make_method(name), replace(options, ratio=ratio),
                             calib if name != "dense" else None) as handle:
                logits = loaded.model(input_ids=ids).logits.float()
                fraction = handle.record.flops.fraction
            what = f"check failed: {loaded.name} {name} at ratio {ratio:g}"
            if ratio == 0.0 and (logits - plain).abs().max().item() > tol:
                raise SystemExit(f"{what}: logits differ from the plain model's by "
                                 f"{(logits - plain).abs().max().item():.3g} (allowed {tol:.3g})")
            if ratio > 0.0 and not (torch.isfinite(logits).all() and fraction < 1.0):
                raise SystemExit(f"{what}: non-finite logits or no FLOPs saved (fraction {fraction:.3f})")


@torch.inference_mode()
def time_generation(loaded: LoadedModel, batch: int, prompt: int, new: int, device: str) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation from random prompt tokens."""
    from aapp.models.kv_cache import cache_kwarg, new_cache

    model = loaded.model
    ids = torch.randint(10, loaded.geometry.vocab_size, (batch, prompt), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    attn = torch.ones_like(ids)
    cache_arg = {cache_kwarg(model): new_cache(model)}
    with stopwatch(device) as prefill:
        logits = model(input_ids=ids, attention_mask=attn, **cache_arg, use_cache=True, logits_to_keep=1).logits
    with stopwatch(device) as decode:
        for _ in range(new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            attn = torch.cat([attn, torch.ones_like(nxt)], dim=1)
            logits = model(input_ids=nxt, attention_mask=attn, **cache_arg, use_cache=True).logits
    return prefill.seconds, decode.seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama2-7b,gemma3-12b")
    ap.add_argument("--methods", default="dense,pp,aapp")
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="cut the layer count (memory); default: real")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--dense-layers", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    batches = [int(b) for b in args.batch.split(",") if b]
    methods = args.methods.split(",")
    if args.json:
        check_writable(args.json)
    cuda = torch.device(args.device).type == "cuda"

    rows = []
    for shape in args.shapes.split(","):
        loaded = build(shape, args.device, dtype, args.layers)
        weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
        calib = synthetic_calibration(loaded)
        options = PruneOptions(ratio=args.ratio, backend=args.backend, dense_layers=args.dense_layers)
        check(loaded, calib, methods, options, args.device)
        for name in methods:
            ratio = 0.0 if name == "dense" else args.ratio
            handle = prune_model(loaded, make_method(name), replace(options, ratio=ratio),
                                 calib=calib if name != "dense" else None)
            try:
                for batch in batches:
                    time_generation(loaded, batch, min(args.prompt, 32), 2, args.device)  # compiles, allocates
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    runs = rounds([batch], lambda b: time_generation(loaded, b, args.prompt, args.new, args.device),
                                  warmup=0, repeats=args.repeats)[batch]
                    pre = summary([r[0] for r in runs])["median"]
                    dec = summary([r[1] for r in runs])["median"]
                    rows.append({"shape": shape, "method": name, "ratio": ratio, "batch": batch,
                                 "backend": "dense (HF)" if name == "dense" else handle.backend.name, "prefill_s": pre, "decode_s": dec,
                                 "prefill_tok_s": batch * args.prompt / pre,
                                 "decode_tok_s": batch * args.new / dec if args.new else None,
                                 "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                                 "weights_gib": weights_gib,
                                 "flops_fraction_last_decode_step": handle.record.flops.to_dict()["fraction"]})
            finally:
                handle.remove()
        del loaded
        if cuda:
            torch.cuda.empty_cache()
    for r in rows:
        base = next(b for b in rows if (b["shape"], b["batch"], b["method"]) == (r["shape"], r["batch"], "dense"))
        r["prefill_speedup"] = base["prefill_s"] / r["prefill_s"]
        r["decode_speedup"] = base["decode_s"] / r["decode_s"] if args.new else None

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"end to end, prompt {args.prompt}, {args.new} new tokens")
    for col in ("shape", "method", "ratio", "batch", "backend", "prefill tok/s", "decode tok/s", "prefill x",
                "decode x", "peak GiB"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["shape"], r["method"], f"{r['ratio']:.1f}", str(r["batch"]), r["backend"],
                      f"{r['prefill_tok_s']:.0f}", f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-",
                      f"{r['prefill_speedup']:.2f}", f"{r['decode_speedup']:.2f}" if r["decode_speedup"] else "-",
                      f"{r['peak_gpu_gib']:.1f}" if r["peak_gpu_gib"] is not None else "-")
    Console(stderr=True).print(table)
    report = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "command": script_command("bench_e2e", sys.argv[1:] if argv is None else argv),
        "dtype": str(dtype), "prompt": args.prompt, "new_tokens": args.new, "rows": rows,
    }
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
