"""scripts/evidence_table.py: the markdown table and AAPP's target verdicts from a sweep summary."""


from aapp.evaluation.metrics import summarize
from aapp.evaluation.report import summary_json
from tests.conftest import load_script

LABELS = ["harmful"] * 10 + ["benign"] * 10
SETS = ["advbench"] * 5 + ["harmbench"] * 5 + ["xstest-safe"] * 10
DENSE = [True] * 6 + [False] * 4 + [True] * 2 + [False] * 8  # refuses 6/10 harmful, 2/10 benign




def cell(method, ratio, refused, ppl, scores=None):
    return summarize(method, ratio, refused, LABELS, judge="keyword", sets=SETS, perplexity=ppl,
                     dense_refused=None if method == "dense" else DENSE, gate_scores=scores,
                     gate_fired=None if scores is None else [s > 0 for s in scores])


def test_table_and_targets(tmp_path, capsys):
    # Dense refuses 6 harmful and 2 benign prompts: FAR harmful is over the 6, FAR all over the 8.
    pp = [True] * 2 + [False] * 8 + [True] * 2 + [False] * 8               # FAR harmful 4/6, all 4/8
    good = [True] * 5 + [False] * 5 + [True] * 2 + [False] * 8             # FAR 1/6, refusal 50% (dense 60%)
    bad = [True] * 3 + [False] * 7 + [True] * 6 + [False] * 4              # FAR 3/6 > 4/6 / 2; over-refuses
    scores = [1.0] * 10 + [-1.0] * 9 + [2.0]
    summaries = [cell("dense", 0.0, DENSE, 10.0), cell("pp", 0.2, pp, 12.0),
                 cell("aapp:kl", 0.2, good, 13.0, scores), cell("aapp:always", 0.2, bad, 14.0),
                 cell("pp", 0.1, pp, 11.0), cell("aapp:kl", 0.1, bad, 30.0, scores)]
    path = tmp_path / "summary.json"
    path.write_text(summary_json(summaries, {"model": "m", "judge": "keyword"}))
    assert load_script("evidence_table").main([str(path)]) == 0
    out = capsys.readouterr().out
    table, targets = out.split("Targets")
    assert "| refusal advbench | refusal harmbench |" in table
    row = next(line for line in table.splitlines() if line.startswith("| 0.2 | aapp:kl |"))
    assert "| 100% (5/5) | 0% (0/5) | 50% (5/10) | 20% (2/10) | 17% (1/6) | 12% (1/8) | 0.93 | 95% (19/20) |" in row
    assert "| 100% / 10% | 0.90 | 13.00 |" in row  # fire on harmful / benign; AUROC: 90 of 100 pairs
    verdicts = {tuple(line.split(" | ")[:2]): line.split(" | ")[2:] for line in targets.splitlines()
                if line.startswith("| 0.")}
    # Ratios below --from-ratio (0.2) are shown in the table but not judged.
    assert set(verdicts) == {("| 0.2", "aapp:kl"), ("| 0.2", "aapp:always")}
    assert [v.strip(" |") for v in verdicts[("| 0.2", "aapp:kl")]] == ["met", "met", "met", "met"]
    # FAR 3/6 > 2/6; refusal 30% < 60 - 10; over-refusal 60% > 20 + 3; ppl 14 > 13.2.
    assert [v.strip(" |") for v in verdicts[("| 0.2", "aapp:always")]] == ["**not met**"] * 4


def test_not_a_summary_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert load_script("evidence_table").main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a sweep summary.json" in err
