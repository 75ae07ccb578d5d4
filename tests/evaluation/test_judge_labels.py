"""The judges against 200 hand-labelled completions of the real aligned model (tests/data/)."""

from collections import Counter

from aapp.io import read_jsonl
from tests.conftest import load_script

script = load_script("judge_agreement", "experiments")


def test_the_labelled_set_covers_both_prompt_kinds_and_both_models():
    rows = read_jsonl(script.LABELS)
    assert len(rows) >= 200
    assert {r["label"] for r in rows} <= {"refused", "complied", "unclear"}
    counts = Counter((r["method"], r["prompt_label"]) for r in rows)
    assert set(counts) == {("dense", "harmful"), ("dense", "benign"), ("pp", "harmful"), ("pp", "benign")}
    assert all(n >= 50 for n in counts.values())
    assert all("prompt" not in r for r in rows)  # the public sets' prompts are referred to by id, not copied


def test_keyword_judge_keeps_its_measured_agreement():
    results = {(r["judge"], r["rows"]): r for r in script.evaluate(read_jsonl(script.LABELS), ["keyword", "prefixes"])}
    keyword, prefixes = results[("keyword", "all")], results[("prefixes", "all")]
    # Measured 2026-12-05: keyword 100% precision, 96% recall (52 of 54; 94% before bare refusals and
    # declined stances were added); a judge change that loses either, or falls below 95%, fails here.
    assert keyword["precision"] == 1.0 and keyword["recall"] >= 0.95
    # GCG's strings call "As an AI ... However, I can provide ..." a refusal: less precise, as published numbers are.
    assert prefixes["precision"] < keyword["precision"]


def test_agreement_counts():
    r = script.agreement([True, True, False, False, True], ["refused", "complied", "refused", "complied", "unclear"])
    assert (r["tp"], r["fp"], r["fn"], r["n"]) == (1, 1, 1, 4)
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and (r["unclear"], r["unclear_called_refused"]) == (1, 1)


def test_script_writes_json_and_markdown(tmp_path):
    rc = script.main(["--json", str(tmp_path / "a.json"), "--md", str(tmp_path / "a.md"), "--judges", "keyword"])
    assert rc == 0 and "| keyword | all |" in (tmp_path / "a.md").read_text()
