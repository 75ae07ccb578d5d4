"""Time the kept-channel kernels against dense cuBLAS and Probe Pruning's gather-then-matmul.

    python scripts/bench_kernels.py --json bench.json                  # a GPU: every shape, bf16
    python scripts/bench_kernels.py --compile --rows 1,8,32 --json d.json   # decode, eager and compiled
                                   # (--compile compiles once per row: restrict --shapes/--keep if slow)
    python scripts/bench_kernels.py --device cpu --shapes tiny --rows 1,4 --keep 0.5   # smoke
    python scripts/bench_kernels.py --check-only --dtype fp16 --json c.json   # correctness only, no timing

Run from the repository root (or with the package installed). Per linear, keep fraction and row count
it times, on one device in one process:
  dense        F.linear on the full weight (the unpruned model),
  gather+mm    the kept weights copied, then F.linear (PP's way, the copy paid on every call),
  small dense  F.linear on weights gathered beforehand (a genuinely smaller dense model),
  ours         the prepared backend call (`triton` on CUDA; on CPU `torch`, or `triton` under
               TRITON_INTERPRET=1), checked against the fp32 reference before it is timed.
CUDA times are `triton.testing.do_bench` medians (L2 flushed before each call); CPU times are
torch.utils.benchmark medians. The table goes to stderr; the JSON goes to --json, or to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from aapp.errors import AappError
from aapp.io import atomic_write, check_writable
from aapp.provenance import device_name, machine
from aapp.timing import kernel_ms, kernel_timer_name, sync
from aapp_kernels.backend import LinearBackend, get_backend, k_major

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Normwise relative error allowed in the pre-timing check: a few output-dtype roundings (2^-9 bf16).
CHECK_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
DECODE_ROWS, PREFILL_ROWS = 32, 2048
console = Console(stderr=True, width=None if sys.stderr.isatty() else 220)


@dataclass(frozen=True)
class LinearCase:
    """One linear of a model: op "out" gathers rows of W [n, k], "in" columns, "gated" rows of two."""

    model: str
    name: str
    op: str
    n: int
    k: int
    unit: int  # channels per pruned unit: head_dim for attention, 1 for MLP channels
    multiple: int = 1  # kept MLP channels are rounded to this (the engine's channel_multiple)


def _attn(model, hidden, heads, kv_heads, head_dim):
    """q (and k/v, when GQA gives them another shape) gather kept-head rows; o gathers their columns."""
    gqa = kv_heads != heads
    cases = [LinearCase(model, "q" if gqa else "q/k/v", "out", heads * head_dim, hidden, head_dim)]
    if gqa:
        cases.append(LinearCase(model, "k/v", "out", kv_heads * head_dim, hidden, head_dim))
    cases.append(LinearCase(model, "o", "in", hidden, heads * head_dim, head_dim))
    return cases


def _mlp(model, hidden, inter, multiple=64):
    return [
        LinearCase(model, "gate/up", "gated", inter, hidden, 1, multiple),
        LinearCase(model, "down", "in", hidden, inter, 1, multiple),
    ]


SHAPES = {
    "llama2-7b": _attn("llama2-7b", 4096, 32, 32, 128) + _mlp("llama2-7b", 4096, 11008),
    "gemma3-12b": _attn("gemma3-12b", 3840, 16, 8, 256) + _mlp("gemma3-12b", 3840, 15360),
    "tiny": _attn("tiny", 48, 8, 4, 8) + _mlp("tiny", 48, 96, multiple=8),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--shapes", default="llama2-7b,gemma3-12b", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--keep", default="0.5,0.6,0.8", help="kept fractions")
    p.add_argument("--rows", default="1,8,32,2048,8192", help="rows M (tokens) per call")
    p.add_argument("--json", dest="json_path", help="write the results here (default: stdout)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd decode (M <= 32)")
    p.add_argument("--check-only", action="store_true",
                   help="only compare every kernel with its torch reference (exit 1 at the first mismatch)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.shape_sets = [s for s in args.shapes.split(",") if s]
        unknown = [s for s in args.shape_sets if s not in SHAPES]
        if unknown:
            p.error(f"unknown shape set(s) {unknown}; choose from {sorted(SHAPES)}")
        args.keeps = [float(v) for v in args.keep.split(",") if v]
        args.row_counts = [int(v) for v in args.rows.split(",") if v]
    except ValueError as exc:
        p.error(str(exc))
    if not args.keeps or not all(0 < v <= 1 for v in args.keeps):
        p.error("--keep takes fractions in (0, 1]")
    if not args.row_counts or min(args.row_counts) < 1:
        p.error("--rows takes positive integers")
    return args


# ---------------------------------------------------------------------------------------------- timing
# Every timing goes through aapp.timing.kernel_ms, the benchmarks' shared runner (`timer` below).


def copy_bandwidth_gbps(device: torch.device, timer) -> float:
    """Read + write bytes per second of a plain tensor copy: the memory-bound ceiling on this device."""
    nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Operands:
    """Everything one (case, keep, rows) measurement touches."""

    idx: torch.Tensor
    x: torch.Tensor  # what the dense layer sees: [M, k]
    x_ours: torch.Tensor  # what our call sees: compact [M, kept] for "in", else x
    weights: tuple[torch.Tensor, ...]  # model layout (row-major)
    kernel_weights: tuple[torch.Tensor, ...]  # the layout our backend is given
    layout: str


def kept_index(case: LinearCase, keep: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    total = (case.k if case.op == "in" else case.n) // case.unit
    if case.unit == 1:
        kept = max(case.multiple, round(keep * total / case.multiple) * case.multiple)
    else:
        kept = max(1, round(keep * total))
    units = torch.randperm(total, generator=gen)[: min(kept, total)].sort().values
    idx = (units[:, None] * case.unit + torch.arange(case.unit)).flatten()
    return idx.to(device)


def make_weights(case: LinearCase, dtype, device, gen) -> tuple[torch.Tensor, ...]:
    """The model's weights for one linear, row-major [n, k] ~ N(0, 1/k); made once per case."""
    count = 2 if case.op == "gated" else 1
    return tuple((torch.randn(case.n, case.k, generator=gen) * case.k**-0.5).to(device, dtype) for _ in range(count))


def make_operands(case, weights, kernel_weights, keep, rows, gen) -> Operands:
    device, dtype = weights[0].device, weights[0].dtype
    idx = kept_index(case, keep, gen, device)
    x = torch.randn(rows, case.k, generator=gen).to(device, dtype)
    x_ours = x.index_select(1, idx) if case.op == "in" else x
    layout = "row-major" if kernel_weights[0] is weights[0] else "K-major"
    return Operands(idx, x, x_ours, weights, kernel_weights, layout)


def kernel_layout(case: LinearCase, weights):
    """Scattered input channels are read as kept rows of W.T (see kernels/README.md); the rest as is."""
    if case.op == "in" and case.unit == 1:
        return (k_major(weights[0]),)
    return weights


def prepare(backend: LinearBackend, case: LinearCase, weights, idx, activation="silu"):
    if case.op == "in":
        return backend.input_gather(weights[0], idx)
    if case.op == "out":
        return backend.output_gather(weights[0], None, idx)
    return backend.gated_up(weights[0], weights[1], idx, activation)


def dense_fn(case: LinearCase, ops: Operands):
    """The unpruned layer, and the weight it reads."""
    if case.op == "gated":
        w = torch.cat(ops.weights)  # one GEMM for gate and up, as a fused dense MLP would run

        def gated():
            g, u = F.linear(ops.x, w).chunk(2, dim=-1)
            return F.silu(g) * u

        return gated, w
    w = ops.weights[0]
    return (lambda: F.linear(ops.x, w)), w


def reference(case: LinearCase, ops: Operands) -> torch.Tensor:
    from aapp_kernels.gated_mlp import gated_up_reference
    from aapp_kernels.gather_in import gather_in_reference
    from aapp_kernels.gather_out import gather_out_reference

    if case.op == "in":
        return gather_in_reference(ops.x_ours, ops.weights[0], ops.idx)
    if case.op == "out":
        return gather_out_reference(ops.x, ops.weights[0], None, ops.idx)
    return gated_up_reference(ops.x, ops.weights[0], ops.weights[1], ops.idx, "silu")


def moved_bytes(case: LinearCase, rows: int, kept: int, elt: int) -> int:
    """Bytes a kept-channel call must move at least: kept weights, x, y and idx."""
    if case.op == "in":
        return (case.n * kept + rows * kept + rows * case.n) * elt + kept * 8
    weights = 2 if case.op == "gated" else 1
    return (weights * kept * case.k + rows * case.k + rows * kept) * elt + kept * 8


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> float:
    if out.shape != ref.shape:
        raise AappError(f"{what}: shape {tuple(out.shape)} but the reference is {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise AappError(f"{what}: non-finite outputs (unwritten elements?)")
    err = ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
    if err > CHECK_TOL[dtype]:
        raise AappError(f"{what}: relative error {err:.2e} exceeds {CHECK_TOL[dtype]:.0e}")
    return err


def poison_allocator(shape, dtype, device) -> None:
    """Leave a NaN block of the output's size in the caching allocator, so an unwritten output shows."""
    if device.type == "cuda":
        torch.full(shape, float("nan"), dtype=dtype, device=device)


def compiled(fn, device: torch.device, tensors):
    """torch.compile'd fn; on CUDA with CUDA graphs, its weights marked static so replays never copy them."""
    for t in tensors:
        torch._dynamo.mark_static_address(t)
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(fn, mode=mode, fullgraph=True)


# ------------------------------------------------------------------------------------------------- run


def verify(case, ops: Operands, args, backend) -> float:
    """Our call and the torch backend against the fp32 reference; raises AappError naming a mismatch."""
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    what = f"{case.model} {case.name} {args.dtype} keep={ops.idx.numel()}/{case.k if case.op == 'in' else case.n} " \
           f"rows={ops.x.shape[0]}"
    ref = reference(case, ops)
    poison_allocator(ref.shape, dtype, device)
    err = check(prepare(backend, case, ops.kernel_weights, ops.idx)(ops.x_ours), ref, dtype, f"{what} ({backend.name})")
    check(prepare(get_backend("torch", device), case, ops.weights, ops.idx)(ops.x_ours), ref, dtype, f"{what} (torch)")
    return err


def check_row(case, weights, kernel_weights, keep, rows, args, backend, gen) -> dict:
    ops = make_operands(case, weights, kernel_weights, keep, rows, gen)
    err = verify(case, ops, args, backend)
    return {"model": case.model, "linear": case.name, "op": case.op, "n": case.n, "k": case.k, "layout": ops.layout,
            "rows": rows, "keep_requested": keep, "kept": ops.idx.numel(), "dtype": args.dtype,
            "backend": backend.name, "check_rel_err": err, "tolerance": CHECK_TOL[DTYPES[args.dtype]]}


def measure(case, weights, kernel_weights, keep, rows, args, backend, timer, copy_gbps, gen) -> dict:
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    ops = make_operands(case, weights, kernel_weights, keep, rows, gen)
    kept = ops.idx.numel()
    full = case.k if case.op == "in" else case.n
    torch_backend = get_backend("torch", device)

    dense, dense_weight = dense_fn(case, ops)
    gather_mm = lambda: prepare(torch_backend, case, ops.weights, ops.idx)(ops.x_ours)  # noqa: E731
    small = prepare(torch_backend, case, ops.weights, ops.idx)
    ours = prepare(backend, case, ops.kernel_weights, ops.idx)
    err = verify(case, ops, args, backend)
    what = f"{case.model} {case.name} keep={keep} rows={rows}"

    row = {
        "model": case.model, "linear": case.name, "op": case.op, "n": case.n, "k": case.k,
        "layout": ops.layout, "unit": case.unit, "rows": rows, "keep_requested": keep,
        "kept": kept, "of": full, "keep": kept / full, "backend": backend.name, "check_rel_err": err,
        "dense_ms": timer(dense), "gather_mm_ms": timer(gather_mm),
        "small_dense_ms": timer(lambda: small(ops.x_ours)), "ours_ms": timer(lambda: ours(ops.x_ours)),
    }
    if args.compile and rows <= DECODE_ROWS:
        ours_c = compiled(ours, device, [v for v in vars(ours).values() if isinstance(v, torch.Tensor)])
        dense_c = compiled(dense, device, [dense_weight])
        check(ours_c(ops.x_ours).clone(), reference(case, ops), dtype, f"{what} (compiled)")
        row["ours_compiled_ms"] = timer(lambda: ours_c(ops.x_ours))
        dense_c()
        row["dense_compiled_ms"] = timer(dense_c)

    elt = torch.finfo(dtype).bits // 8
    row["ideal_speedup"] = full / kept
    row["speedup_vs_dense"] = row["dense_ms"] / row["ours_ms"]
    row["fraction_of_ideal"] = row["speedup_vs_dense"] / row["ideal_speedup"]
    row["speedup_vs_gather_mm"] = row["gather_mm_ms"] / row["ours_ms"]
    row["ours_gbps"] = moved_bytes(case, rows, kept, elt) / (row["ours_ms"] * 1e-3) / 1e9
    row["fraction_of_copy_bw"] = row["ours_gbps"] / copy_gbps
    row["regime"] = "decode" if rows <= DECODE_ROWS else "prefill" if rows >= PREFILL_ROWS else "between"
    row["target_met"] = target_met(row) if device.type == "cuda" else None
    return row


def target_met(row: dict) -> bool | None:
    """The issue's H100 targets: decode near bandwidth, prefill near ideal and ahead of gather+mm."""
    if row["regime"] == "decode":
        return row["fraction_of_ideal"] >= 0.9 and row["fraction_of_copy_bw"] >= 0.85
    if row["regime"] == "prefill":
        return row["fraction_of_ideal"] >= 0.9 and row["speedup_vs_gather_mm"] >= 1.15
    return None


def choose_backend(device: torch.device) -> LinearBackend:
    """triton on CUDA; on CPU the torch backend unless the kernels run in Triton's interpreter."""
    if device.type == "cpu":
        from aapp_kernels.backend import triton_unavailable

        return get_backend("triton" if triton_unavailable(device) is None else "torch", device)
    return get_backend("auto", device)


def render(rows: list[dict], compiled_cols: bool) -> Table:
    table = Table(title="kept-channel linears (ms are medians)", show_lines=False)
    cols = ["model", "linear", "n x k", "keep", "M", "dense", "gather+mm", "small", "ours"]
    if compiled_cols:
        cols += ["ours cmp", "dense cmp"]
    cols += ["x dense", "of ideal", "x gather", "GB/s", "of copy", "target"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "linear") else "right")
    for r in rows:
        cells = [r["model"], r["linear"], f"{r['n']}x{r['k']}", f"{r['keep']:.2f}", str(r["rows"]),
                 f"{r['dense_ms']:.4g}", f"{r['gather_mm_ms']:.4g}", f"{r['small_dense_ms']:.4g}",
                 f"{r['ours_ms']:.4g}"]
        if compiled_cols:
            cells += [f"{r['ours_compiled_ms']:.4g}" if "ours_compiled_ms" in r else "",
                      f"{r['dense_compiled_ms']:.4g}" if "dense_compiled_ms" in r else ""]
        met = {True: "[green]yes", False: "[red]no", None: ""}[r["target_met"]]
        cells += [f"{r['speedup_vs_dense']:.3g}", f"{r['fraction_of_ideal']:.0%}", f"{r['speedup_vs_gather_mm']:.3g}",
                  f"{r['ours_gbps']:.0f}", f"{r['fraction_of_copy_bw']:.0%}", met]
        table.add_row(*cells)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = torch.device(args.device)
        if args.json_path:
            check_writable(args.json_path, "--json")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AappError("--device cuda but CUDA is not available")
        backend = choose_backend(device)
        if args.compile:
            torch._dynamo.config.recompile_limit = 1024
            torch._dynamo.config.accumulated_recompile_limit = 4096
            torch._dynamo.config.fail_on_recompile_limit_hit = True  # never time a silent eager fallback
        timer = partial(kernel_ms, device=device)
        timer_name = kernel_timer_name(device)
        copy_gbps = None if args.check_only else copy_bandwidth_gbps(device, timer)
        console.print(f"{device_name(device)}: " + ("correctness only" if args.check_only else
                      f"copy bandwidth {copy_gbps:.0f} GB/s, timer {timer_name}") + f", backend {backend.name}, {args.dtype}")
        gen = torch.Generator().manual_seed(args.seed)
        results = []
        cases = [c for s in args.shape_sets for c in SHAPES[s]]
        with console.status("measuring") as status:
            for case in cases:
                weights = make_weights(case, DTYPES[args.dtype], device, gen)
                kernel_weights = kernel_layout(case, weights)
                for keep in args.keeps:
                    for rows in args.row_counts:
                        status.update(f"{case.model} {case.name} keep {keep} rows {rows}")
                        if args.check_only:
                            results.append(check_row(case, weights, kernel_weights, keep, rows, args, backend, gen))
                        else:
                            results.append(measure(case, weights, kernel_weights, keep, rows, args, backend, timer,
                                                   copy_gbps, gen))
                        sync(device)
                del weights, kernel_weights
    except AappError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    if args.check_only:
        worst = max(results, key=lambda r: r["check_rel_err"] / r["tolerance"])
        console.print(f"all {len(results)} kernel calls match the torch reference ({args.dtype}); worst relative "
                      f"error {worst['check_rel_err']:.1e} of {worst['tolerance']:.0e} ({worst['model']} {worst['linear']})")
    else:
        console.print(render(results, args.compile))
    report = {
        "device": device_name(device), "device_type": device.type, "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]) if argv is None else " ".join(["bench_kernels.py", *argv]),
        "dtype": args.dtype, "backend": backend.name, "check_only": args.check_only,
        "timer": None if args.check_only else timer_name, "copy_bandwidth_gbps": copy_gbps,
        "shapes": [asdict(c) for c in cases], "results": results,
    }
    text = json.dumps(report, indent=1)
    if args.json_path:
        with atomic_write(args.json_path) as f:
            f.write(text + "\n")
        console.print(f"wrote {args.json_path}")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
