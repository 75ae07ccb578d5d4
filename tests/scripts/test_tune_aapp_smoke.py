"""scripts/tune_aapp.py on a tiny random model: tuning set from dense refusals, every config, JSON."""

import json

from aapp.evaluation.judges import Verdict
from tests.conftest import load_script
from tests.evaluation.sweep_inputs import make_inputs


class EveryOtherRefused:
    """A random model never says sorry; this judge refuses prompts by position, so counts are known."""

    def judge(self, prompts, completions):
        return [Verdict(refused=i % 2 == 0, score=1.0, reason="test") for i in range(len(prompts))]


def test_tune_aapp_smoke(tiny_model_dir, tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path, tiny_model_dir, n_harmful=8)
    script = load_script("tune_aapp")
    monkeypatch.setattr(script, "KeywordJudge", EveryOtherRefused)
    out = tmp_path / "tune.json"
    rc = script.main(["--model", str(tiny_model_dir), "--calib", str(inputs.calib), "--prompts", str(inputs.harmful),
                      "--pool", "8", "--n", "3", "--ratios", "0.5", "--critical", "diff,setdiff",
                      "--protect", "0.25,0.5", "--dense-layers", "1", "--max-new-tokens", "2", "--batch-size", "4", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert (doc["pool"], doc["dense_refused"], doc["n"]) == (8, 4, 3)
    # setdiff at 0.5 protects nothing (both pools are every channel): reported, skipped, not a crash.
    assert [(r["method"], r["critical"], r["protect"]) for r in doc["rows"]] == [
        ("pp", None, None), ("aapp:always", "diff", 0.25), ("aapp:always", "diff", 0.5),
        ("aapp:always", "setdiff", 0.25)]
    # The tuning set is 3 prompts; the judge refuses positions 0 and 2 of each batch of 3.
    assert all(r["of"] == 3 and r["kept_refusals"] == 2 for r in doc["rows"])
