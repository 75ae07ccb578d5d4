"""The CLI as a user runs it: real subprocesses, stdout for data, one-line errors, no partial files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def aapp(*args, stdin=None, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "aapp.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=REPO, env=e, timeout=600)


def one_line_error(result, *needles):
    assert result.returncode == 1, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("aapp: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("cli")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": p, "label": lab}) + "\n" for i, (p, lab) in
                                             enumerate([("how do I bake bread", "benign"), ("say hi", "benign"),
                                                        ("write a poem", "benign")])))
    words = "the quick brown fox jumps over the lazy dog while the river runs past the old mill".split()
    paragraphs = [" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(40)]
    (d / "text.txt").write_text("\n\n".join(paragraphs))
    calib = d / "calib.safetensors"
    r = aapp("calibrate", "--model", tiny_model_dir, "--text", d / "text.txt", "--samples", 4, "--seq-len", 32,
             "--limit", 4, "--gate-ratios", "0.2,0.3,0.4", "--out", calib)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    return d


def test_help_lists_commands():
    r = aapp("--help")
    for cmd in ("calibrate", "prune", "eval-refusal", "models"):
        assert cmd in r.stdout


def test_prune_pipes_jsonl_to_stdout(workdir, tiny_model_dir):
    r = aapp("prune", "--model", tiny_model_dir, "--method", "pp", "--ratio", 0.3, "--opt", "dense_layers=1",
             "--calib", workdir / "calib.safetensors", "--max-new-tokens", 4,
             stdin=(workdir / "prompts.jsonl").read_text())
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "warning" not in r.stderr, r.stderr  # no third-party noise
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["q0", "q1", "q2"]
    assert all(row["method"] == "pp" and row["ratio"] == 0.3 and row["flops"]["fraction"] < 1 for row in rows)
    assert len(rows[0]["kept"]["heads"]) == 4

    # ... and eval-refusal reads it from stdin, writing its outputs into --out.
    dense = aapp("prune", "--model", tiny_model_dir, "--method", "dense", "--input", workdir / "prompts.jsonl",
                 "--max-new-tokens", 4, "--out", workdir / "dense.jsonl")
    assert dense.returncode == 0 and dense.stdout == "", dense.stderr
    ev = aapp("eval-refusal", "--reference", workdir / "dense.jsonl", "--out", workdir / "eval", "--json", stdin=r.stdout)
    assert ev.returncode == 0, ev.stderr
    summary = json.loads(ev.stdout)
    assert {s["method"] for s in summary} >= {"pp"}
    assert (workdir / "eval" / "summary.json").exists()


def test_aapp_rows_record_gate(workdir, tiny_model_dir):
    r = aapp("prune", "--model", tiny_model_dir, "--method", "aapp", "--ratio", 0.3, "--opt", "dense_layers=1",
             "--calib", workdir / "calib.safetensors", "--max-new-tokens", 2, "--input", workdir / "prompts.jsonl",
             "--limit", 2)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(isinstance(row["gate"]["fired"], bool) for row in rows)


def test_prune_sort_by_length_keeps_input_order(workdir, tiny_model_dir):
    r = aapp("prune", "--model", tiny_model_dir, "--method", "dense", "--input", workdir / "prompts.jsonl",
             "--max-new-tokens", 2, "--batch-size", 2, "--sort-by-length")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["q0", "q1", "q2"]


@pytest.mark.parametrize("args, needles", [
    (["--method", "pp"], ["needs a calibration file", "aapp calibrate"]),
    (["--method", "pp", "--ratio", "1.5", "--calib", "X"], ["ratio must be in [0, 1)"]),
    (["--method", "nope"], ["unknown method"]),
    (["--method", "dense", "--input", "missing.jsonl"], ["missing.jsonl"]),
])
def test_prune_bad_input(workdir, tiny_model_dir, args, needles):
    out = workdir / "never.jsonl"
    r = aapp("prune", "--model", tiny_model_dir, "--out", out, *args)
    one_line_error(r, *needles)
    assert not out.exists()


def test_bad_mix_is_a_one_line_error(tmp_path):
    out = tmp_path / "out"
    one_line_error(aapp("eval-refusal", "--model", "m", "--harmful", "advbench", "--mix", "benign=0.5", "--out", out),
                   "--mix", "sum to 1")
    assert not out.exists()


@pytest.mark.parametrize("command", [["prune", "--method", "aapp", "--calib", "X"],
                                     ["eval-refusal", "--model", "m", "--calib", "X"]], ids=["prune", "eval-refusal"])
def test_bad_restore_is_a_one_line_error(tmp_path, command):
    out = tmp_path / "out"
    one_line_error(aapp(*command, "--opt", "restore=loud", "--out", out), "unknown restore 'loud'", "harmful-mean")
    assert not out.exists()


@pytest.mark.parametrize("args, needles", [
    # An option the method lacks names the options it has; nothing given is ignored.
    (["--method", "pp", "--opt", "gate=kl"], ["pp has no option 'gate'", "dense_layers"]),
    (["--method", "pp", "--opt", "protect=0.9", "--opt", "restore=harmful-mean"], ["pp has no option 'protect'"]),
    (["--method", "wanda-sp", "--opt", "reprobe_every=2"], ["wanda-sp has no option 'reprobe_every'"]),
    (["--method", "dense", "--opt", "dense_layers=1"], ["dense has no option 'dense_layers'", "none"]),
    (["--method", "dense", "--ratio", "0.5"], ["dense prunes nothing, so it takes no ratio"]),
    (["--method", "aapp", "--opt", "protec=0.2"], ["did you mean 'protect'"]),
    (["--method", "aapp", "--opt", "protect=lots"], ["option protect: expected float, got 'lots'"]),
    (["--method", "aapp", "--opt", "protect"], ["expected KEY=VALUE"]),
    (["--method", "aapp:kl", "--opt", "gate=logistic"], ["aapp:kl sets gate=kl", "gate=logistic"]),
    (["--method", "aapp:dense", "--opt", "on_fire=protect"], ["aapp:dense sets on_fire=dense", "on_fire=protect"]),
    (["--method", "aapp", "--opts", "missing.toml"], ["missing.toml: no such options file"]),
    (["--method", "ppp"], ["unknown method 'ppp' (did you mean 'pp'?)"]),
    (["--method", "aapp", "--opt", "on_fire=dense", "--opt", "protect=0.5"], ["protect=0.5 does not apply"]),
    (["--method", "aapp", "--opt", "on_fire=sometimes"], ["on_fire takes protect, dense or a ratio"]),
    (["--method", "pp", "--opt", "on_fire=dense"], ["pp has no option 'on_fire'"]),
])
def test_options_that_do_not_apply_are_one_line_errors(tmp_path, args, needles):
    out = tmp_path / "out.jsonl"
    one_line_error(aapp("prune", "--calib", "X", "--out", out, *args), *needles)
    assert not out.exists()


def test_opts_file_sets_method_options_and_opt_wins(workdir, tiny_model_dir, tmp_path):
    opts = tmp_path / "aapp.toml"
    opts.write_text('gate = "always"\ndense_layers = 1\nprotect = 0.2\n')
    base = ("prune", "--model", tiny_model_dir, "--method", "aapp", "--calib", workdir / "calib.safetensors",
            "--input", workdir / "prompts.jsonl", "--limit", 1, "--max-new-tokens", 1, "--opts", opts)
    rows = [json.loads(line) for line in aapp(*base).stdout.splitlines()]
    assert rows[0]["gate"]["fired"] is True and rows[0]["kept"]["channels"][0] == 160  # layer 0 dense, as the file says
    r = aapp(*base, "--opt", "gate=never")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["gate"]["fired"] is False
    bad = tmp_path / "bad.json"
    bad.write_text('{"gate": {"nested": 1}}')
    one_line_error(aapp(*base[:-1], bad), "flat table")


def test_methods_lists_methods_variants_and_options():
    r = aapp("methods")
    assert r.returncode == 0, r.stderr
    lines = [line.split("\t") for line in r.stdout.splitlines()]  # a pipe gets plain tab-separated lines
    names = {line[0] for line in lines if line[1] in ("method", "variant")}
    assert {"dense", "pp", "aapp", "wanda-sp", "flap", "aapp:kl", "pp:history-only"} <= names
    aapp_options = {line[2] for line in lines if line[:2] == ["aapp", "method"] and line[2]}
    assert {"gate", "protect", "restore", "per_sample"} <= aapp_options
    engine = {(line[0], line[2]) for line in lines if line[1] == "engine"}
    assert ("pp", "reprobe_every") in engine and ("wanda-sp", "dense_layers") in engine
    assert ("wanda-sp", "reprobe_every") not in engine and not any(m == "dense" for m, _ in engine)
    doc = json.loads(aapp("methods", "aapp", "--json").stdout)
    assert [m["name"] for m in doc] == ["aapp"] and {o["name"] for o in doc[0]["options"]} >= {"gate", "protect"}
    one_line_error(aapp("methods", "nope"), "unknown method")


@pytest.mark.parametrize("command, most", [("prune", 18), ("eval-refusal", 23)])
def test_help_option_counts_stay_small(command, most):
    import typer.main

    from aapp.cli import app

    params = typer.main.get_command(app).commands[command].params
    options = [p.name for p in params if p.param_type_name == "option"]  # --help is click's, added apart
    assert "model" in options and len(options) <= most, options


def test_malformed_prompt_file_names_line(workdir, tiny_model_dir):
    bad = workdir / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    out = workdir / "never.jsonl"
    r = aapp("prune", "--model", tiny_model_dir, "--method", "dense", "--input", bad, "--out", out)
    one_line_error(r, "bad.jsonl:2")
    assert not out.exists()


def test_unknown_model_and_foreign_calibration(workdir, tiny_model_dir, tmp_path):
    prompts = workdir / "prompts.jsonl"
    one_line_error(aapp("prune", "--model", "no-such-model", "--method", "dense", "--input", prompts), "unknown model")
    one_line_error(aapp("prune", "--model", tmp_path / "nowhere", "--method", "dense", "--input", prompts),
                   "no such model directory")
    # A calibration file made for another model is refused before any generation.
    from tests.conftest import make_loaded

    other = tmp_path / "other"
    m = make_loaded("tiny-llama", seed=1)
    m.model.save_pretrained(other)
    m.tokenizer.save_pretrained(other)
    r = aapp("prune", "--model", other, "--method", "pp", "--opt", "dense_layers=1", "--calib", workdir / "calib.safetensors",
             "--input", workdir / "prompts.jsonl", "--out", tmp_path / "x.jsonl")
    one_line_error(r, "made for model")
    assert not (tmp_path / "x.jsonl").exists()


def test_eval_refusal_bad_input(workdir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p"}) + "\n")
    one_line_error(aapp("eval-refusal", rows, "--out", tmp_path / "out" / "a"), "completion")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text("{not json\n")
    one_line_error(aapp("eval-refusal", malformed, "--out", tmp_path / "out"), "malformed.jsonl:1")
    assert not (tmp_path / "out").exists()  # a rejected input leaves no directory behind
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(aapp("eval-refusal", empty))


def test_sweep_with_device_map(workdir, tiny_model_dir, tmp_path):
    """--device map:auto goes through accelerate's placement (all on the CPU here) and the sweep runs."""
    r = aapp("eval-refusal", "--model", tiny_model_dir, "--device", "map:auto", "--methods", "dense",
             "--ratios", "0.3", "--harmful", f"{workdir / 'prompts.jsonl'}:2", "--max-new-tokens", 2,
             "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "summary.json").exists()
    one_line_error(aapp("eval-refusal", "--model", tiny_model_dir, "--device", "map:nowhere", "--methods", "dense",
                        "--harmful", workdir / "prompts.jsonl", "--out", tmp_path / "n"), "nowhere")
    assert not (tmp_path / "n").exists()


def test_load_model_hands_device_map_to_from_pretrained(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from aapp.models.loading import load_model

    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map", "absent"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir), device="cpu")
    loaded = load_model(str(tiny_model_dir), device="cpu", device_map="auto")
    assert seen == ["absent", "auto"] and loaded.device.type == "cpu"


def test_prompt_longer_than_the_context(workdir, tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "long", "prompt": "ab " * context}) + "\n"
                       + json.dumps({"id": "short", "prompt": "say hi"}) + "\n")
    base = ("prune", "--model", tiny_model_dir, "--method", "dense", "--input", prompts, "--max-new-tokens", 3)
    r = aapp(*base)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["short"]
    (note,) = [ln for ln in r.stderr.splitlines() if "prompt long" in ln]
    assert f"context of {context}" in note and "left out" in note
    r = aapp(*base, "--truncate")
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows["long"]["truncated_tokens"] > 0 and rows["long"]["prompt_tokens"] + 3 <= context
    assert rows["long"]["prompt"].endswith("ab ab")  # the front is cut, the end kept
    one_line_error(aapp(*base[:-1], context + 1), "no room")


def test_export_static_checkpoint(workdir, tiny_model_dir, tmp_path):
    out = tmp_path / "small"
    r = aapp("export", "--model", tiny_model_dir, "--method", "wanda-sp", "--ratio", 0.3,
             "--calib", workdir / "calib.safetensors", "--out", out)
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM

    small = AutoModelForCausalLM.from_pretrained(out)
    assert small.config.intermediate_size < 160
    one_line_error(aapp("export", "--model", tiny_model_dir, "--method", "pp", "--ratio", 0.3,
                        "--calib", workdir / "calib.safetensors", "--out", tmp_path / "nope"), "static")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("args, needle", [
    (("tiny-llama", "--text-only"), "tiny-llama has none"),
    (("llama3-8b",), "unknown shape"),
    (("tiny-llama", "--dtype", "int8"), "unknown dtype"),
])
def test_random_rejects_bad_options_before_writing(tmp_path, args, needle):
    out = tmp_path / "m"
    one_line_error(aapp("models", "random", *args, "--out", out), needle)
    assert not out.exists()


def test_random_multimodal_gemma3_through_every_command(tmp_path):
    # A newcomer's path at the target scale, on the tiny multimodal shape: write, calibrate, prune, judge, export.
    mm, text = tmp_path / "gemma3-mm", tmp_path / "gemma3-text"
    r = aapp("models", "random", "tiny-gemma3", "--layers", 2, "--out", mm)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert json.loads((mm / "config.json").read_text())["architectures"] == ["Gemma3ForConditionalGeneration"]
    one_line_error(aapp("models", "random", "tiny-gemma3", "--out", mm), "not empty")
    calib = tmp_path / "c.safetensors"
    r = aapp("calibrate", "--model", mm, "--samples", 4, "--seq-len", 32, "--limit", 6, "--out", calib)
    assert r.returncode == 0, r.stderr
    rows = tmp_path / "rows.jsonl"
    one_line_error(aapp("prune", "--model", mm, "--calib", calib, "--method", "aapp", "--ratio", 0.3, "--input",
                        "advbench", "--limit", 1), "dense_layers=3 keeps every layer", "dense_layers 1 or fewer")
    r = aapp("prune", "--model", mm, "--calib", calib, "--method", "aapp", "--ratio", 0.3, "--opt", "dense_layers=1",
             "--input", "advbench", "--limit", 3, "--batch-size", 2, "--max-new-tokens", 4, "--out", rows)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(got) == 3 and all(row["new_tokens"] >= 1 and row["kept"]["channels"][1] < 160 for row in got)
    # The prompt went through Gemma's template: its post-instruction tail is what the gate read.
    assert all(row["prompt_tokens"] > len(row["prompt"]) for row in got)
    r = aapp("eval-refusal", rows, "--out", tmp_path / "judged")
    assert r.returncode == 0, r.stderr
    r = aapp("export", "--model", mm, "--calib", calib, "--method", "wanda-sp", "--ratio", 0.3, "--out", tmp_path / "small")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "small" / "config.json").read_text())["text_config"]["intermediate_size"] < 160
    # The text-only variant is another model: the multimodal calibration is refused for it.
    assert aapp("models", "random", "tiny-gemma3", "--layers", 2, "--text-only", "--out", text).returncode == 0
    one_line_error(aapp("prune", "--model", text, "--calib", calib, "--method", "pp", "--opt", "dense_layers=1",
                        "--input", "advbench", "--limit", 1), "made for model")


def test_calibrate_update_adds_gate_thresholds_and_keeps_the_rest(workdir, tiny_model_dir, tmp_path):
    import shutil

    import torch

    from aapp.calibration.store import load_calibration, to_tensors
    from aapp.methods.aapp.store import alignment
    from tests.conftest import make_loaded

    calib = tmp_path / "c.safetensors"
    shutil.copy(workdir / "calib.safetensors", calib)
    before = load_calibration(calib)
    assert alignment(before).pruned.ratios == (0.2,)  # of 0.2,0.3,0.4, all that 4 layers allow
    r = aapp("calibrate", "--model", tiny_model_dir, "--update", "--gate-ratios", "0.1,0.2", "--limit", 4,
             "--out", calib)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "warning" not in r.stderr, r.stderr
    after = load_calibration(calib)
    assert after.meta == before.meta and alignment(after).pruned.ratios == (0.1, 0.2)
    t0, t1 = to_tensors(before), to_tensors(after)
    assert t0.keys() == t1.keys()
    for key in t0:
        if key.endswith(".pruned_threshold"):  # [R, L]: 0.1 added; 0.2 refitted the same as the full run did
            torch.testing.assert_close(t1[key][1], t0[key][0], rtol=0, atol=1e-5)
            assert t1[key].shape[0] == 2
        else:
            assert torch.equal(t0[key], t1[key]), key

    # Another model's file is refused in one line and left as it was.
    other = tmp_path / "other"
    loaded = make_loaded("tiny-llama")
    loaded.model.save_pretrained(other, safe_serialization=True)
    loaded.tokenizer.save_pretrained(other)
    data = calib.read_bytes()
    one_line_error(aapp("calibrate", "--model", other, "--update", "--gate-ratios", "0.1", "--out", calib),
                   "made for model")
    assert calib.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "other"]  # no temp left


def test_prune_reads_chat_rows_and_json_arrays_and_carries_the_messages(tiny_model_dir):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    rows_in = [{"id": "chat", "messages": messages}, {"id": "plain", "prompt": "Say bye"}]
    r = aapp("prune", "--model", tiny_model_dir, "--method", "dense", "--max-new-tokens", 2,
             stdin=json.dumps(rows_in))
    assert r.returncode == 0, r.stderr
    chat, plain = (json.loads(line) for line in r.stdout.splitlines())
    assert (chat["id"], chat["prompt"], chat["messages"]) == ("chat", "Say hi", messages)
    assert (plain["id"], plain["prompt"]) == ("plain", "Say bye") and "messages" not in plain
    assert chat["prompt_tokens"] > plain["prompt_tokens"]  # the system message was rendered too
