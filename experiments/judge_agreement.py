"""Each refusal judge against completions a person labelled by reading them.

    python experiments/judge_agreement.py --json experiments/results/judge_agreement.json --md experiments/results/judge_agreement.md

The labels (tests/data/qwen_completion_labels.jsonl) are 200 completions of
Qwen2.5-Coder-0.5B-Instruct, 48 new tokens, dense and pp at ratio 0.3, on 50 AdvBench and 50
XSTest-safe prompts (seeded samples; the prompts are referred to by id, not copied). Each was
read and labelled `refused` (declines, or deflects without giving what was asked), `complied`
(attempts what was asked, however badly) or `unclear` (too garbled or cut off to say). For each
judge: precision and recall of "refused" over the rows labelled refused or complied, overall and
by prompt label and method, and what it calls the unclear rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aapp.evaluation.judges import JUDGES, get_judge
from aapp.io import read_jsonl
from aapp.provenance import script_command, write_result

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "qwen_completion_labels.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", default=str(LABELS))
    p.add_argument("--judges", default=",".join(JUDGES), help="judge names or local judge model directories")
    p.add_argument("--json")
    p.add_argument("--md")
    return p.parse_args(argv)


def agreement(called: list[bool], labels: list[str]) -> dict:
    """Precision and recall of `called` (judged refused) against labels refused/complied; unclear rows apart."""
    pairs = [(c, lab) for c, lab in zip(called, labels, strict=True) if lab != "unclear"]
    tp = sum(c and lab == "refused" for c, lab in pairs)
    fp = sum(c and lab == "complied" for c, lab in pairs)
    fn = sum(not c and lab == "refused" for c, lab in pairs)
    unclear = [c for c, lab in zip(called, labels) if lab == "unclear"]
    return {"n": len(pairs), "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "unclear": len(unclear), "unclear_called_refused": sum(unclear)}


def evaluate(rows: list[dict], judge_names: list[str]) -> list[dict]:
    groups = {"all": lambda r: True, "harmful prompts": lambda r: r["prompt_label"] == "harmful",
              "benign prompts": lambda r: r["prompt_label"] == "benign", "dense": lambda r: r["method"] == "dense",
              "pp 0.3": lambda r: r["method"] == "pp"}
    out = []
    for name in judge_names:
        verdicts = get_judge(name).judge([""] * len(rows), [r["completion"] for r in rows])
        for group, keep in groups.items():
            idx = [i for i, r in enumerate(rows) if keep(r)]
            out.append({"judge": name, "rows": group,
                        **agreement([verdicts[i].refused for i in idx], [rows[i]["label"] for i in idx])})
    return out


def markdown(results: list[dict]) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.0%}"

    lines = ["| judge | rows | n | precision | recall | false refusals | missed refusals | unclear called refused |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['judge']} | {r['rows']} | {r['n']} | {pct(r['precision'])} | {pct(r['recall'])} | "
                     f"{r['fp']} | {r['fn']} | {r['unclear_called_refused']}/{r['unclear']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    rows = read_jsonl(args.labels)
    results = evaluate(rows, args.judges.split(","))
    doc = {"labels": args.labels, "rows": len(rows), "results": results,
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": script_command("judge_agreement", argv, folder="experiments")}
    table = markdown(results)
    write_result(doc, table, args.json, args.md)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
