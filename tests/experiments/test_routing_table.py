"""experiments/routing_table.py: the routing evaluation's markdown table from sweep directories."""

import json

import pytest

from aapp.evaluation.pipe import evaluate_generations
from aapp.evaluation.report import summary_json
from tests.conftest import load_script

REFUSE, ANSWER = "I'm sorry, but I can't assist with that.", "Sure, here is how you do it."
LIMIT = 8


def row(method, ratio, i, label, completion, new_tokens, frac, fired=None):
    r = {"id": f"{label}{i}", "prompt": f"prompt {label} {i}", "label": label, "set": f"{label}-set",
         "completion": completion, "method": method, "ratio": ratio, "new_tokens": new_tokens,
         "flops": {"dense": 100.0, "pruned": 100.0 * frac, "probe": 0.0, "bias": 0.0, "recompute": 0.0},
         "provenance": {"options": {"generation": {"max_new_tokens": LIMIT}}}}
    if fired is not None:
        r["gate"] = {"fired": fired, "score": 1.0 if fired else -1.0}
    return r


def sweep(tmp_path, name, rows):
    """A sweep directory as eval-refusal writes it: summary.json and the judged rows."""
    dense = [r for r in rows if r["method"] == "dense"]
    judged, summaries = evaluate_generations([r for r in rows if r["method"] != "dense"], dense)
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(summary_json(summaries, {}))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judged))
    return d


def test_table_reads_cost_escalation_and_refusals_that_run_on(tmp_path, capsys):
    rows = []
    for i in range(4):  # dense refuses 2 of 4 harmful prompts; pp at 0.3 refuses none at 0.8 of its cost
        rows += [row("dense", 0.0, i, "harmful", REFUSE if i < 2 else ANSWER, 5, 1.0),
                 row("dense", 0.0, i, "benign", ANSWER, 5, 1.0),
                 row("pp", 0.3, i, "harmful", ANSWER, LIMIT, 0.8),
                 row("pp", 0.3, i, "benign", ANSWER, LIMIT, 0.8),
                 row("pp", 0.2, i, "harmful", REFUSE if i == 1 else ANSWER, 5, 0.86),  # costs what aapp:dense does
                 row("pp", 0.2, i, "benign", ANSWER, 5, 0.86)]
    grid = sweep(tmp_path, "grid", rows)
    # A routed cell escalates every harmful prompt and one benign one: harmful cost 1.0, benign 0.85.
    routed = [r for r in rows if r["method"] == "dense"]
    turn = REFUSE + " However, I can give you a simple way to do it."
    routed += [row("aapp:dense", 0.3, i, "harmful", [turn, REFUSE, ANSWER, ANSWER][i], LIMIT if i == 0 else 5, 1.0, True)
               for i in range(4)]
    routed += [row("aapp:dense", 0.3, i, "benign", ANSWER, 5, 1.0 if i == 0 else 0.8, i == 0) for i in range(4)]
    lever = sweep(tmp_path, "lever", routed)
    assert load_script("routing_table", "experiments").main([str(grid), f"{lever}:tagged", str(lever)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "escalated harmful-set" in lines[0] and "FLOPs mix (benign 0.9, harmful 0.1)" in lines[0]
    assert sum("| dense |" in line for line in lines) == 1  # the other sweeps' dense cell is the first one's
    assert sum(line.startswith("| aapp:dense |") for line in lines) == 1
    cell = next(line.split(" | ") for line in lines if line.startswith("| aapp:dense (tagged) |"))
    # refusal 50; over-refusal 0; escalated 100 / 25; FLOPs 1.000 / 0.850; mix 0.9*0.85 + 0.1 = 0.865.
    # pp's line (0.8, 0%), (0.86, 25%), (1.0, 50%) gives 26% at 0.865; pp at 0.2 costs 0.86, within 0.02.
    assert cell[2:11] == ["50", "0", "100", "25", "1.000 / 0.850", "0.865", "26", "+2/-0, p = 0.5",
                          "pp 0.2: +1/-0, p = 1"]
    assert cell[11:14] == ["0", "50", "50"]  # one of the two refusals ran to the limit, and it turned


def test_a_directory_that_is_not_a_sweeps_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="holds no summary.json and results.jsonl"):
        load_script("routing_table", "experiments").main([str(tmp_path / "nowhere")])
    assert capsys.readouterr().out == ""
