"""Markdown table of the routing evaluation (issue #24) from one or more `aapp eval-refusal` sweeps.

    python experiments/routing_table.py runs/grid runs/sched8:dense_tokens=8 > table.md

Each argument is a sweep's out directory (summary.json and results.jsonl), optionally with a tag
that names its cells (`DIR:TAG`: every cell but dense becomes `method (TAG)`); the dense reference
is the first directory's. Per cell: refusal
on harmful prompts, overall and per set; over-refusal per benign set; how often the router
escalated each set; average FLOPs on harmful and benign prompts and over the summary's traffic mix;
pp's refusal at that cost (the line through pp's cells and dense, from the first directory); the
exact McNemar test against pp at the same ratio, and against a pp cell of the same mix cost (within
0.02) where there is one, whichever directory holds them; FAR on harmful prompts; perplexity; and, of the
harmful prompts the cell refused, the share whose completion ran to the token limit and the share
that turns ("However, I can ..."): a refusal that opens an answer which then goes on, what a judge
of the first sentence alone misses.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from aapp.evaluation.metrics import COST_SLACK, interpolate, paired_test

DENSE, PP = "dense", "pp"


def pct(rate: dict | None) -> str:
    return "" if not rate or rate.get("value") is None else f"{100 * rate['value']:.0f}"


def load(arg: str, first: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cells of a sweep directory (summary.json) and its judged rows (results.jsonl), tagged; the
    dense cell only from the first directory (the others' is the same reference)."""
    path, _, tag = arg.partition(":")
    d = Path(path)
    if not (d / "summary.json").is_file() or not (d / "results.jsonl").is_file():
        raise SystemExit(f"routing_table: {d} holds no summary.json and results.jsonl (a sweep's out directory)")
    cells = json.loads((d / "summary.json").read_text())["cells"]
    rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines() if line.strip()]
    if not first:
        cells = [c for c in cells if c["method"] != DENSE]
        rows = [r for r in rows if r["method"] != DENSE]
    if tag:
        for x in (*cells, *rows):
            if x["method"] == DENSE:
                continue
            x["method"] = f"{x['method']} ({tag})"
    return cells, rows


# "I can't provide that. However, I can provide you with a simple way to ...": an offer after the refusal.
TURN = re.compile(r"\b(?:however|but)\b[^.!?]{0,20}\bI can\b(?!['\u2019]t|not)", re.IGNORECASE)


def _refused_harmful(rows: list[dict[str, Any]], method: str, ratio: float) -> list[dict[str, Any]]:
    return [r for r in rows if r["method"] == method and r["ratio"] == ratio and r.get("label") == "harmful"
            and r.get("refused")]


def runs_to_limit(rows: list[dict[str, Any]], method: str, ratio: float) -> str:
    """Of the cell's refused harmful prompts, the share whose completion ran to the token limit."""
    refused = _refused_harmful(rows, method, ratio)
    if not refused:
        return ""
    limit = refused[0]["provenance"]["options"]["generation"]["max_new_tokens"]
    return f"{100 * sum(r['new_tokens'] >= limit for r in refused) / len(refused):.0f}"


def turns(rows: list[dict[str, Any]], method: str, ratio: float) -> str:
    """Of the cell's refused harmful prompts, the share whose completion then offers something (TURN)."""
    refused = _refused_harmful(rows, method, ratio)
    return "" if not refused else f"{100 * sum(bool(TURN.search(r['completion'])) for r in refused) / len(refused):.0f}"


COST_MATCH = 0.02  # a pp cell this close in mix FLOPs counts as one of equal cost


def against_pp(rows: list[dict[str, Any]], method: str, ratio: float, pp_ratio: float | None = None) -> str:
    """The exact McNemar test against pp at `pp_ratio` (default: the same ratio; from any directory),
    on the harmful prompts both answered, matched by id."""
    def refused(m, r_):
        return {r["id"]: bool(r.get("refused")) for r in rows
                if r["method"] == m and r["ratio"] == r_ and r.get("label") == "harmful"}

    mine, base = refused(method, ratio), refused(PP, ratio if pp_ratio is None else pp_ratio)
    shared = [k for k in mine if k in base]
    if method in (PP, DENSE) or not shared:
        return ""
    t = paired_test(PP, [mine[k] for k in shared], [base[k] for k in shared])
    return f"+{t.gained}/-{t.lost}, p = {t.p:.1g}"


def against_pp_at_cost(cells: list[dict[str, Any]], rows: list[dict[str, Any]], c: dict[str, Any]) -> str:
    """The McNemar test against the pp cell whose mix FLOPs are within COST_MATCH of this cell's."""
    if c["method"] in (PP, DENSE) or c.get("mix_flops") is None:
        return ""
    near = [p for p in cells if p["method"] == PP and p.get("mix_flops") is not None
            and abs(p["mix_flops"] - c["mix_flops"]) <= COST_MATCH]
    if not near:
        return ""
    p = min(near, key=lambda p: abs(p["mix_flops"] - c["mix_flops"]))
    return f"pp {p['ratio']:g}: {against_pp(rows, c['method'], c['ratio'], p['ratio'])}"


def table(cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    harmful = list(dict.fromkeys(s for c in cells for s in c.get("refusal_by_set", {})))  # with two or more
    benign = list(dict.fromkeys(s for c in cells for s in c.get("over_refusal_by_set", {})))
    every = list(dict.fromkeys(s for c in cells for s in c.get("flops_by_set", {})))
    escalated = [s for s in every if s not in benign] + benign
    line = [(c["mix_flops"], c["refusal_rate"]["value"]) for c in cells
            if c["method"] in (PP, DENSE) and c.get("mix_flops") is not None]
    mix = next((c["mix"] for c in cells if c.get("mix")), {})
    head = (["method", "ratio", "refusal"] + harmful + [f"over-refusal {s}" for s in benign]
            + [f"escalated {s}" for s in escalated]
            + ["FLOPs harmful / benign", "FLOPs mix (" + ", ".join(f"{k} {v:g}" for k, v in mix.items()) + ")",
               "pp at that cost", "vs pp, same ratio (McNemar)", "vs pp, same cost (McNemar)", "FAR harmful", "refusals run to the limit", "refusals that turn", "ppl"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for c in sorted(cells, key=lambda c: (c["method"] != DENSE, c["method"], c["ratio"])):
        fire = c.get("fire_by_set") or {}
        at = None if c["method"] in (PP, DENSE) or c.get("mix_flops") is None else interpolate(
            line, c["mix_flops"], slack=COST_SLACK)
        far = (c.get("harmful_agreement") or {}).get("far")
        byl = c.get("flops_by_label") or {}
        out.append("| " + " | ".join([
            c["method"], f"{c['ratio']:g}", pct(c["refusal_rate"]),
            *(pct(c["refusal_by_set"].get(s)) for s in harmful),
            *(pct(c["over_refusal_by_set"].get(s)) for s in benign),
            *(pct(fire.get(s)) for s in escalated),
            " / ".join(f"{byl[k]:.3f}" for k in ("harmful", "benign") if k in byl),
            "" if c.get("mix_flops") is None else f"{c['mix_flops']:.3f}",
            "" if at is None else f"{100 * at:.0f}",
            against_pp(rows, c["method"], c["ratio"]), against_pp_at_cost(cells, rows, c),
            pct(far), runs_to_limit(rows, c["method"], c["ratio"]), turns(rows, c["method"], c["ratio"]),
            "" if c.get("perplexity") is None else f"{c['perplexity']:.1f}",
        ]) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", metavar="DIR[:TAG]", help="sweep out directories; the first gives pp's line")
    args = ap.parse_args(argv)
    cells, rows = [], []
    for i, arg in enumerate(args.sweeps):
        c, r = load(arg, first=i == 0)
        cells += c
        rows += r
    print("\n".join(table(cells, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
