"""experiments/tune_aapp.py on a tiny random model: tuning set from dense refusals, every config, JSON."""

import json

import pytest

from aapp.errors import InputError
from aapp.evaluation.judges import Verdict
from tests.conftest import load_script
from tests.evaluation.sweep_inputs import make_inputs


class EveryOtherRefused:
    """A random model never says sorry; this judge refuses prompts by position, so counts are known."""

    def judge(self, prompts, completions):
        return [Verdict(refused=i % 2 == 0, score=1.0, reason="test") for i in range(len(prompts))]


@pytest.fixture
def tune(tiny_model_dir, tmp_path, monkeypatch):
    """Runs the script on the tiny model (8 harmful prompts, 3 tuned on, ratio 0.5) with `args` on top;
    returns its JSON."""
    inputs = make_inputs(tmp_path, tiny_model_dir, n_harmful=8)
    script = load_script("tune_aapp", "experiments")
    monkeypatch.setattr(script, "KeywordJudge", EveryOtherRefused)

    def run(*args: str, max_new_tokens: int = 2) -> dict:
        out = tmp_path / "tune.json"
        assert script.main(["--model", str(tiny_model_dir), "--calib", str(inputs.calib), "--harmful",
                            str(inputs.harmful), "--harmless", str(inputs.benign), "--pool", "8", "--n", "3",
                            "--ratios", "0.5", "--dense-layers", "1", "--max-new-tokens", str(max_new_tokens),
                            "--batch-size", "4", "--json", str(out), *args]) == 0
        return json.loads(out.read_text())
    return run


def test_tune_aapp_smoke(tune):
    doc = tune("--configs", "critical=diff,protect=0.25; critical=setdiff,protect=0.25; critical=setdiff,protect=0.5")
    assert (doc["pool"], doc["dense_refused"], doc["n"]) == (8, 4, 3)
    # setdiff at 0.5 protects nothing (both pools are every channel): reported, skipped, not a crash.
    assert [(r["method"], r["config"]) for r in doc["rows"]] == [
        ("pp", ""), ("aapp:always", "protect=0.25,critical=diff"), ("aapp:always", "protect=0.25")]
    # The tuning set is 3 prompts; the judge refuses positions 0 and 2 of each batch of 3.
    assert all(r["of"] == 3 and r["kept_refusals"] == 2 for r in doc["rows"])
    # Every cell priced on the harmless side, at the same compute as pp (the gate always fires).
    assert all(r["of_harmless"] == 3 and r["chat_ppl"] > 1 for r in doc["rows"])
    assert len({r["pruned_fraction"] for r in doc["rows"]}) == 1 and doc["rows"][0]["flops_fraction"] < 1


def test_configs_parse_fields_with_their_types_and_refuse_unknown_ones():
    script = load_script("tune_aapp", "experiments")
    assert script.parse_configs("protect=0.2,critical=diff; ; per_sample=true") == [
        {"protect": 0.2, "critical": "diff"}, {}, {"per_sample": True}]
    with pytest.raises(InputError, match="FIELD=VALUE"):
        script.parse_configs("protekt=0.2")


def test_tune_aapp_gated_runs_the_real_gate_and_counts_its_fires(tune):
    doc = tune("--gated", "--configs", "gate=always,critical=diff; gate=never,critical=diff")
    assert doc["gated"] and [r["method"] for r in doc["rows"]] == ["pp", "aapp", "aapp"]
    pp, always, never = doc["rows"]
    assert (always["fired_harmful"], always["fired_harmless"]) == (3, 3)
    assert (never["fired_harmful"], never["fired_harmless"]) == (0, 0)
    assert pp["fired_harmful"] == 0


def test_tune_aapp_reprobe_reaches_every_cell(tune):
    fractions = {}
    for reprobe in (0, 1):
        doc = tune("--gated", "--configs", "gate=always,critical=diff", "--reprobe", str(reprobe), max_new_tokens=3)
        assert doc["reprobe"] == reprobe
        fractions[reprobe] = [(r["pruned_fraction"], r["flops_fraction"]) for r in doc["rows"]]
    # Re-picking MLP channels in decode costs probe FLOPs in pp and aapp alike; the plan's share does not move.
    for (pruned0, all0), (pruned1, all1) in zip(fractions[0], fractions[1]):
        assert pruned1 == pruned0 and all1 > all0
