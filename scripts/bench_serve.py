"""Load test of `aapp serve`: a benign-heavy stream through the OpenAI client, on loopback, bounded.

For each method (a spec: `dense`, `pp`, `aapp:dense`, ...), starts `aapp serve` on 127.0.0.1 (a free port;
its default schedule, the dense prefill, unless `--opt prefill=probe`), sends the same N requests
(AdvBench and XSTest-safe mixed 1:9, greedy) at each concurrency, and checks before it reports: every
request got one valid answer (none lost, none duplicated: response ids are unique and the server logged
exactly N requests per cell). It reports throughput, p50/p95 latency, the FLOPs each request ran (its
share of its batch's, from the `aapp` object) and their fraction of dense, the mean batch the server ran,
the share of benign and harmful requests the method escalated (any policy but `pruned`: AAPP's `protect`,
or a route such as `dense`), and how many prompts got
other tokens than at the first concurrency (batched rows sum in another order: the README says why),
then stops the server with SIGTERM and checks that it exits 0.

    python scripts/bench_serve.py --calib calib.safetensors --out serve.json --md serve.md
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from aapp.prompts import load_prompts
from aapp.provenance import machine, script_command, write_result

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--calib", help="Calibration file (pp and aapp need one).")
    ap.add_argument("--methods", default="dense,pp,aapp")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--harmful-share", type=float, default=0.1)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=600, help="Seconds one request may take before it counts as lost.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opt", action="append", default=[], help="KEY=VALUE passed to every pruning method's serve.")
    ap.add_argument("--out", help="JSON result.")
    ap.add_argument("--md", help="Markdown table.")
    args = ap.parse_args(argv)

    n_harm = round(args.requests * args.harmful_share)
    prompts = ([(p.text, "harmful") for p in load_prompts("advbench", sample=n_harm, seed=args.seed)]
               + [(p.text, "benign") for p in load_prompts("xstest-safe", sample=args.requests - n_harm,
                                                          seed=args.seed)])
    # Interleaved, so harmful requests arrive among benign ones as in a stream.
    order = sorted(range(len(prompts)), key=lambda i: (i * 7919) % len(prompts))
    prompts = [prompts[i] for i in order]
    levels = [int(c) for c in args.concurrency.split(",")]
    cells, texts = [], {}
    for method in args.methods.split(","):
        with _server(args, method) as (url, logs):
            for conc in levels:
                n_logs = len(logs)
                cell = _run_cell(url, prompts, conc, args)
                _wait(lambda: len(logs) - n_logs >= len(prompts), 60, "the server's log records")
                served = [r for r in logs[n_logs:] if r.get("event") == "request"]
                start = next(r for r in logs if r.get("event") == "start")
                if len(served) != len(prompts) or any(r["status"] != 200 for r in served):
                    raise SystemExit(f"{method} c={conc}: the server logged {len(served)} requests for "
                                     f"{len(prompts)} sent, or some failed")
                cell["mean_batch"] = statistics.fmean(r["batch"] for r in served)
                first = texts.setdefault(method, cell["texts"])
                cell["texts_varied"] = sum(a != b for a, b in zip(first, cell.pop("texts")))
                cell.update(method=method, ratio=0.0 if method == "dense" else args.ratio, concurrency=conc,
                            prefill=start.get("prefill"), batching=start.get("batching"))
                cells.append(cell)
                print(_row(cell), file=sys.stderr, flush=True)
    doc = {"command": script_command("bench_serve", argv), "machine": machine(), "args": vars(args),
           "load_average": os.getloadavg(), "requests": len(prompts), "harmful": n_harm, "cells": cells,
           "versions": {m: __import__(m).__version__ for m in ("fastapi", "uvicorn", "openai")}}
    table = "\n".join([HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                       *(_row(c) for c in cells)])
    write_result(doc, table, args.out, args.md)
    print(table)
    return doc


HEADER = ("| method | prefill | ratio | concurrency | mean batch | req/s | tokens/s | p50 s | p95 s | GFLOPs/request | "
          "FLOPs fraction | texts unlike c=first | benign escalated | harmful escalated |")


def _row(c: dict) -> str:
    return (f"| {c['method']} | {c['prefill'] or '-'} | {c['ratio']:g} | {c['concurrency']} | {c['mean_batch']:.1f} | "
            f"{c['requests_per_s']:.2f} | {c['tokens_per_s']:.1f} | {c['p50_s']:.2f} | {c['p95_s']:.2f} | "
            f"{c['gflops_run_mean']:.2f} | {c['flops_fraction_mean']:.3f} | {c['texts_varied']} | "
            f"{c['benign_escalated']} | {c['harmful_escalated']} |")


class _server:
    """`aapp serve` on a free loopback port, its stderr JSON records collected; SIGTERM at the end."""

    def __init__(self, args, method: str):
        cmd = [sys.executable, "-m", "aapp.cli", "serve", "--model", args.model, "--method", method,
               "--host", "127.0.0.1", "--port", "0", "--max-batch", str(args.max_batch), "--max-queue", "256"]
        if method != "dense":
            cmd += ["--ratio", str(args.ratio), "--calib", args.calib]
            for opt in args.opt:
                cmd += ["--opt", opt]
        self.cmd, self.logs = cmd, []

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _wait(lambda: any(r.get("event") == "start" for r in self.logs) or self.proc.poll() is not None, 600,
              "the server to start")
        start = next((r for r in self.logs if r.get("event") == "start"), None)
        if start is None:
            raise SystemExit(f"aapp serve did not start: {self.logs[-3:]}")
        return start["url"].removesuffix("/v1"), self.logs

    def _read(self):
        for line in self.proc.stderr:
            try:
                self.logs.append(json.loads(line))
            except json.JSONDecodeError:
                self.logs.append({"event": "text", "line": line.rstrip()})

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("aapp serve did not exit within 120 s of SIGTERM")
        out = self.proc.stdout.read()
        if rc != 0 or out:
            raise SystemExit(f"aapp serve exited {rc} after SIGTERM, stdout {out[:200]!r}")


def _run_cell(url: str, prompts, conc: int, args) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=args.timeout)
    model = client.models.list().data[0].id

    def one(text):
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                           max_tokens=args.max_tokens, temperature=0)
        return r, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        results = list(pool.map(one, [p for p, _ in prompts]))
    wall = time.perf_counter() - t0
    ids = [r.id for r, _ in results]
    if len(set(ids)) != len(prompts):
        raise SystemExit(f"{len(set(ids))} distinct answers for {len(prompts)} requests")
    for r, _ in results:
        c = r.choices[0]
        if c.finish_reason not in ("stop", "length") or not isinstance(c.message.content, str) \
                or r.usage.completion_tokens < 1:
            raise SystemExit(f"an invalid answer: {r}")
    lat = sorted(s for _, s in results)
    labels = [lab for _, lab in prompts]
    # A pruning method's request ran escalated under any policy but `pruned`; the dense model never escalates.
    served = [r.model_extra["aapp"] for r, _ in results]
    protected = [a["method"] != "dense" and a["policy"] != "pruned" for a in served]
    tokens = sum(r.usage.completion_tokens for r, _ in results)

    def share(label):
        n = labels.count(label)
        k = sum(p for p, lab in zip(protected, labels) if lab == label)
        return f"{k}/{n}"

    return {"wall_s": wall, "requests_per_s": len(prompts) / wall, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(lat), "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "completion_tokens": tokens, "benign_escalated": share("benign"), "harmful_escalated": share("harmful"),
            "flops_fraction_mean": statistics.fmean(r.model_extra["aapp"]["flops_fraction"] for r, _ in results),
            "gflops_run_mean": statistics.fmean(_run_flops(r.model_extra["aapp"]["flops"]) for r, _ in results) / 1e9,
            "texts": [r.choices[0].message.content for r, _ in results]}


def _run_flops(flops: dict) -> float:
    """What a request's share of its batch ran (aapp.methods.report.FlopCount.run)."""
    return sum(flops[k] for k in ("pruned", "probe", "bias", "recompute"))


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


if __name__ == "__main__":
    main()
