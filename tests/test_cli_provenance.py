"""What a row and a summary say about what made them, and the inputs that must not pass as data:
provenance in `aapp prune`'s rows and pipe-mode summaries, references from another model, damaged
calibration files, and evaluations without harmful or benign rows."""

import json

from tests.test_cli import aapp, one_line_error, workdir  # noqa: F401  (workdir is a fixture)
from tests.calibration.test_store import _overwrite_tensor_bytes


def test_prune_refuses_a_calibration_with_damaged_tensor_bytes(workdir, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((workdir / "calib.safetensors").read_bytes())
    _overwrite_tensor_bytes(bad)
    out = tmp_path / "x.jsonl"
    r = aapp("prune", "--model", tiny_model_dir, "--method", "pp", "--opt", "dense_layers=1", "--calib", bad,
             "--input", workdir / "prompts.jsonl", "--max-new-tokens", 2, "--out", out)
    one_line_error(r, "bad.safetensors", "non-finite")
    assert not out.exists()


def _prune(model, workdir, out, *extra):
    r = aapp("prune", "--model", model, "--method", "dense", "--input", workdir / "prompts.jsonl",
             "--max-new-tokens", 2, "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def _other_model(tmp_path):
    from tests.conftest import make_loaded

    other = tmp_path / "other"
    m = make_loaded("tiny-qwen2", seed=1)
    m.model.save_pretrained(other)
    m.tokenizer.save_pretrained(other)
    return other


def test_rows_and_summary_say_what_made_them(workdir, tiny_model_dir, tmp_path):
    import transformers

    rows = _prune(tiny_model_dir, workdir, tmp_path / "dense.jsonl")
    prov = rows[0]["provenance"]
    assert all(r["provenance"] == prov for r in rows)
    assert prov["model"]["name"] == str(tiny_model_dir) and len(prov["model"]["fingerprint"]) == 16
    assert (prov["method"], prov["ratio"]) == ("dense", 0.0)
    assert prov["options"]["generation"]["max_new_tokens"] == 2 and prov["options"]["prune"]["dense_layers"] == 3
    assert prov["versions"]["transformers"] == transformers.__version__

    ev = aapp("eval-refusal", tmp_path / "dense.jsonl", "--reference", tmp_path / "dense.jsonl", "--out", tmp_path / "ev")
    assert ev.returncode == 0, ev.stderr
    meta = json.loads((tmp_path / "ev" / "summary.json").read_text())["meta"]
    assert meta["model"] == prov["model"] and meta["runs"] == [prov] and meta["reference"] == [prov]
    assert meta["judge"] == "keyword" and set(meta["versions"]) >= {"aapp", "torch", "transformers"}


def test_a_reference_from_another_model_is_refused(workdir, tiny_model_dir, tmp_path):
    mine = tmp_path / "mine.jsonl"
    _prune(tiny_model_dir, workdir, mine)
    theirs = tmp_path / "theirs.jsonl"
    _prune(_other_model(tmp_path), workdir, theirs)
    one_line_error(aapp("eval-refusal", mine, "--reference", theirs), "made by model", "--allow-model-mismatch")
    r = aapp("eval-refusal", mine, "--reference", theirs, "--allow-model-mismatch", "--json")
    assert r.returncode == 0 and json.loads(r.stdout), r.stderr
    assert "compared as asked" in r.stderr
    # Rows from before provenance (or another tool) cannot be checked: compared, with a warning.
    old = tmp_path / "old.jsonl"
    old.write_text("".join(line for line in theirs.read_text().replace('"provenance"', '"was"').splitlines(True)))
    r = aapp("eval-refusal", mine, "--reference", old)
    assert r.returncode == 0, r.stderr
    assert "record no provenance" in r.stderr
    one_line_error(aapp("eval-refusal", mine, "--allow-model-mismatch"), "--allow-model-mismatch", "--reference")


def test_unlabelled_rows_say_what_is_missing(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "completion": "I can't help with that."}) + "\n")
    r = aapp("eval-refusal", rows, "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert len(notes) == 1 and "no row is labelled 'harmful' or 'benign'" in notes[0], r.stderr
    harmful_only = tmp_path / "harmful.jsonl"
    harmful_only.write_text(json.dumps({"prompt": "p", "completion": "No.", "label": "harmful"}) + "\n")
    r = aapp("eval-refusal", harmful_only)
    assert r.returncode == 0 and "no row is labelled 'benign', so over-refusal is n/a" in r.stderr, r.stderr
