"""Verdicts and tables of a `scripts/gpu_check.sh OUTDIR` run, from the JSON its steps left.

    python scripts/gpu_report.py OUTDIR [--dry]

Writes OUTDIR/gpu_check.json (device, versions, command, one verdict per target) and
OUTDIR/gpu_check.md, and prints one verdict line per target. A step that did not finish
reads "not measured". A dry run (CPU, Triton's interpreter) checks the pipeline, not speed,
so its verdicts say so whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from aapp.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import target_met  # noqa: E402  (one definition of the kernel targets, in the script that times them)

E2E_TARGET = 1.4  # end to end at ratio 0.4, prefill and decode, probe counted
STEP_FILES = {"check_bf16": "kernels-check-bf16.json", "check_fp16": "kernels-check-fp16.json",
              "kernels": "kernels-bf16.json", "e2e": "e2e.json"}


@dataclass(frozen=True)
class Verdict:
    target: str
    met: bool | None  # None: not measured, or a dry run
    detail: str

    def line(self, dry: bool) -> str:
        state = "dry run, not a measurement" if dry and self.met is not None else \
            {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"{self.target}: {state} ({self.detail})"


def load(out: Path) -> dict[str, dict | None]:
    found = {}
    for key, name in STEP_FILES.items():
        path = out / name
        found[key] = json.loads(path.read_text()) if path.is_file() else None
    return found


def correctness(report: dict | None, dtype: str) -> Verdict:
    target = f"kernels match the torch reference ({dtype})"
    if report is None:
        return Verdict(target, None, "step did not finish")
    rows = report["results"]
    worst = max(rows, key=lambda r: r["check_rel_err"] / r["tolerance"])
    return Verdict(target, True, f"{len(rows)} calls, worst relative error {worst['check_rel_err']:.1e} "
                                 f"of {worst['tolerance']:.0e} ({worst['model']} {worst['linear']})")


def kernel_regime(report: dict | None, regime: str, target: str) -> Verdict:
    if report is None:
        return Verdict(target, None, "step did not finish")
    rows = [r for r in report["results"] if r["regime"] == regime]
    if not rows:
        return Verdict(target, None, f"no {regime} rows")
    # Judged here, not read from the rows: bench_kernels leaves CPU rows unjudged, and a dry run exercises this too.
    ok = sum(bool(target_met(r)) for r in rows)
    worst = min(rows, key=lambda r: r["fraction_of_ideal"])
    detail = (f"{ok}/{len(rows)} linears; lowest {worst['fraction_of_ideal']:.0%} of ideal at "
              f"{worst['model']} {worst['linear']} keep {worst['keep']:.2f} M={worst['rows']}")
    if regime == "decode":
        detail += f", min {min(r['fraction_of_copy_bw'] for r in rows):.0%} of copy bandwidth"
    else:
        detail += f", min {min(r['speedup_vs_gather_mm'] for r in rows):.2f}x gather+mm"
    return Verdict(target, ok == len(rows), detail)


def end_to_end(report: dict | None, phase: str) -> Verdict:
    target = f"end to end {phase} >= {E2E_TARGET}x dense at 0.4"
    if report is None:
        return Verdict(target, None, "step did not finish")
    rows = [r for r in report["rows"] if r["method"] != "dense"]
    key = f"{phase}_speedup"
    worst = min(rows, key=lambda r: r[key])
    ok = sum(r[key] >= E2E_TARGET for r in rows)
    return Verdict(target, ok == len(rows), f"{ok}/{len(rows)} runs; lowest {worst[key]:.2f}x "
                                            f"({worst['shape']} {worst['method']} batch {worst['batch']})")


def verdicts(found: dict) -> list[Verdict]:
    return [
        correctness(found["check_bf16"], "bf16"),
        correctness(found["check_fp16"], "fp16"),
        kernel_regime(found["kernels"], "decode", "decode kernels >= 90% of ideal and >= 85% of copy bandwidth"),
        kernel_regime(found["kernels"], "prefill", "prefill kernels >= 90% of ideal and >= 1.15x gather+mm"),
        end_to_end(found["e2e"], "prefill"),
        end_to_end(found["e2e"], "decode"),
    ]


def kernel_table(report: dict) -> list[str]:
    lines = ["| model | linear | n x k | keep | M | dense ms | gather+mm ms | ours ms | x dense | of ideal "
             "| x gather+mm | of copy BW | target |", "|" + "---|" * 13]
    for r in report["results"]:
        met = {True: "met", False: "**not met**", None: ""}[r["target_met"]]
        lines.append(f"| {r['model']} | {r['linear']} | {r['n']}x{r['k']} | {r['keep']:.2f} | {r['rows']} "
                     f"| {r['dense_ms']:.4g} | {r['gather_mm_ms']:.4g} | {r['ours_ms']:.4g} "
                     f"| {r['speedup_vs_dense']:.2f} | {r['fraction_of_ideal']:.0%} | {r['speedup_vs_gather_mm']:.2f} "
                     f"| {r['fraction_of_copy_bw']:.0%} | {met} |")
    return lines


def e2e_table(report: dict) -> list[str]:
    lines = ["| shape | method | batch | backend | prefill tok/s | decode tok/s | prefill x | decode x | peak GiB |",
             "|" + "---|" * 9]
    for r in report["rows"]:
        peak = f"{r['peak_gpu_gib']:.1f}" if r.get("peak_gpu_gib") is not None else "-"
        lines.append(f"| {r['shape']} | {r['method']} | {r['batch']} | {r['backend']} | {r['prefill_tok_s']:.0f} "
                     f"| {r['decode_tok_s']:.1f} | {r['prefill_speedup']:.2f} | {r['decode_speedup']:.2f} | {peak} |")
    return lines


def markdown(found: dict, result: list[Verdict], head: dict, dry: bool) -> str:
    out = [f"# GPU check{' (dry run)' if dry else ''}", "",
           f"Device {head['device']}; {head['versions']}; command `{head['command']}`.", "",
           "## Verdicts", ""] + [f"- {v.line(dry)}" for v in result]
    if found["kernels"]:
        out += ["", "## Kernels (bf16, medians)", ""] + kernel_table(found["kernels"])
    if found["e2e"]:
        e = found["e2e"]
        out += ["", f"## End to end (prompt {e['prompt']}, {e['new_tokens']} new tokens, {e['dtype']})", ""]
        out += e2e_table(e)
    return "\n".join(out) + "\n"


def header(out: Path, found: dict) -> dict:
    first = next((r for r in found.values() if r), None) or {}
    m = first.get("machine", {})
    command = (out / "command.txt").read_text().strip() if (out / "command.txt").is_file() else None
    return {"device": first.get("device", "unknown"),
            "versions": ", ".join(f"{k} {m.get(k)}" for k in ("torch", "triton", "transformers", "cuda")),
            "command": command, "date": first.get("date")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry", action="store_true", help="the run was gpu_check.sh --dry")
    args = ap.parse_args(argv)
    if not args.out.is_dir():
        print(f"gpu_report: {args.out} is not a directory", file=sys.stderr)
        return 2
    found = load(args.out)
    result = verdicts(found)
    head = header(args.out, found)
    with atomic_write(args.out / "gpu_check.json") as f:
        json.dump({**head, "dry": args.dry, "verdicts": [asdict(v) for v in result]}, f, indent=1)
    with atomic_write(args.out / "gpu_check.md") as f:
        f.write(markdown(found, result, head, args.dry))
    for v in result:
        print(v.line(args.dry))
    return 0 if all(v.met is not None for v in result) else 1


if __name__ == "__main__":
    sys.exit(main())
