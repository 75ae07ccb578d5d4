"""experiments/evidence_table.py: the markdown table and AAPP's target verdicts from a sweep summary."""

import json


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
    good = [True] * 6 + [False] * 4 + [True] * 2 + [False] * 8             # FAR 0/6, refusal 60% (dense 60%)
    bad = [True] * 3 + [False] * 7 + [True] * 6 + [False] * 4              # FAR 3/6 > 0.35 x 4/6; over-refuses
    scores = [1.0] * 10 + [-1.0] * 9 + [2.0]                                # AUROC 0.90 on each set; 1/10 benign fire
    fooled = [1.0] * 5 + [-2.0] * 5 + [-1.0] * 8 + [2.0] * 2               # harmbench under every benign; 2/10 fire
    summaries = [cell("dense", 0.0, DENSE, 10.0), cell("pp", 0.3, pp, 12.0),
                 cell("aapp:kl", 0.3, good, 12.2, scores), cell("aapp:always", 0.3, bad, 12.3, fooled),
                 cell("pp", 0.2, pp, 11.0), cell("aapp:kl", 0.2, bad, 30.0, scores)]
    path = tmp_path / "summary.json"
    path.write_text(summary_json(summaries, {"model": "m", "judge": "keyword"}))
    assert load_script("evidence_table", "experiments").main([str(path)]) == 0
    out = capsys.readouterr().out
    table, targets = out.split("Targets")
    assert "| refusal advbench | refusal harmbench |" in table
    row = next(line for line in table.splitlines() if line.startswith("| 0.3 | aapp:kl |"))
    assert "| 100% (5/5) | 20% (1/5) | 60% (6/10) | 20% (2/10) | 0% (0/6) | n/a | 0% (0/8) | 1.00 |" in row
    assert "| 100% / 10% | 0.90 | advbench 0.90, harmbench 0.90 | 12.20 |" in row
    verdicts = {tuple(line.split(" | ")[:2]): [v.strip(" |") for v in line.split(" | ")[2:]]
                for line in targets.splitlines() if line.startswith("| 0.")}
    # Ratios without targets (0.2) are shown in the table but not judged.
    assert set(verdicts) == {("| 0.3", "aapp:kl"), ("| 0.3", "aapp:always")}
    assert verdicts[("| 0.3", "aapp:kl")] == ["met (k=0.35)", "met (d=5)", "met", "met", "met", "met"]
    # FAR 3/6 > 0.35 x 4/6; refusal 30% < 60 - 5; over-refusal 60% > 20 + 3; harmbench AUROC 0;
    # 2/10 benign fires; ppl 12.3 > 1.02 x 12.
    assert verdicts[("| 0.3", "aapp:always")] == ["**not met** (k=0.35)", "**not met** (d=5)"] + ["**not met**"] * 4


def test_perplexity_from_a_ppl_sweep_fills_cells_without_one(tmp_path, capsys):
    pp = [True] * 2 + [False] * 8 + [True] * 2 + [False] * 8
    summaries = [cell("dense", 0.0, DENSE, None), cell("pp", 0.3, pp, None), cell("aapp", 0.3, pp, 15.0)]
    path = tmp_path / "summary.json"
    path.write_text(summary_json(summaries, {"model": "m", "judge": "keyword"}))
    # One scripts/ppl_sweep.py JSON per cell, as the issue-15 evaluation was run.
    pp_ppl, aapp_ppl = tmp_path / "pp@0.3.json", tmp_path / "aapp@0.3.json"
    pp_ppl.write_text(json.dumps({"rows": [{"method": "dense", "ratio": 0.0, "ppl": 9.0},
                                           {"method": "pp", "ratio": 0.3, "ppl": 12.0}]}))
    aapp_ppl.write_text(json.dumps({"rows": [{"method": "dense", "ratio": 0.0, "ppl": 9.0},
                                             {"method": "aapp", "ratio": 0.3, "ppl": 99.0}]}))
    assert load_script("evidence_table", "experiments").main([str(path), "--ppl", str(pp_ppl), str(aapp_ppl)]) == 0
    table = capsys.readouterr().out.split("Targets")[0]
    assert "| 9.00 |" in table and "| 12.00 |" in table
    assert "| 15.00 |" in table and "99.00" not in table  # a cell's own perplexity wins
    # ... and the Pareto plot takes every cell that has both a refusal rate and a perplexity.
    png = tmp_path / "pareto.png"
    assert load_script("evidence_table", "experiments").main([str(path), "--ppl", str(pp_ppl), "--pareto", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_missing_a_set_is_held_to_dense_on_its_own_sets(tmp_path, capsys):
    # Dense refuses advbench 5/5, harmbench 1/5, jailbreaks 0/5: 40% overall, 60% without jailbreaks.
    # An aapp cell not yet run on jailbreaks refuses 4/10 = 40%: level with dense overall, 20 points
    # under dense on its own sets.
    sets = ["advbench"] * 5 + ["harmbench"] * 5 + ["jailbreaks"] * 5 + ["xstest-safe"] * 10
    labels = ["harmful"] * 15 + ["benign"] * 10
    dense_refused = [True] * 6 + [False] * 9 + [False] * 10
    dense = summarize("dense", 0.0, dense_refused, labels, judge="keyword", sets=sets)
    keep = list(range(10)) + list(range(15, 25))

    def partial(method, refused):
        return summarize(method, 0.3, refused, [labels[i] for i in keep], judge="keyword",
                         sets=[sets[i] for i in keep], dense_refused=[dense_refused[i] for i in keep])
    cells = [dense, partial("pp", [False] * 20), partial("aapp", [True] * 4 + [False] * 16)]
    path = tmp_path / "summary.json"
    path.write_text(summary_json(cells, {}))
    assert load_script("evidence_table", "experiments").main([str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.split("Targets")[1].splitlines() if "| aapp |" in line)
    assert row.split(" | ")[3] == "**not met** (d=5)"


def test_header_says_what_the_summary_knows(tmp_path, capsys):
    cells = [cell("dense", 0.0, DENSE, 10.0), cell("pp", 0.3, DENSE, 12.0)]
    for meta, first_line in (({}, "judge keyword"),  # pipe mode: no meta, the judge from the cells
                             ({"model": "m", "judge": "prefixes", "n_harmful": 10, "n_benign": 10,
                               "max_new_tokens": 48}, "model m, judge prefixes, 10 harmful + 10 benign prompts, 48 new tokens")):
        path = tmp_path / "summary.json"
        path.write_text(summary_json(cells, meta))
        assert load_script("evidence_table", "experiments").main([str(path)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == first_line


def test_not_a_summary_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert load_script("evidence_table", "experiments").main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a sweep summary.json" in err
