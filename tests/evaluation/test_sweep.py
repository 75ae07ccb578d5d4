"""Sweep mode: every cell generated, judged and written; cells reused on resume, after a kill; bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aapp.errors import AappError, CalibrationError, InputError
from aapp.evaluation.sweep import CellSettings, PromptSettings, run_sweep
from aapp.evaluation.sweep_store import CELLS, CellStore, rows_name
from tests.evaluation.sweep_inputs import (CHILD, HARMFUL, PROSE, TIMING, Inputs, child_env, config_json,
                                           make_config, make_inputs, read_rows, settings_of)

@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("sweep-inputs"), tiny_model_dir)


def count_generated(monkeypatch) -> list[tuple[str, str]]:
    """The (method, prompt id) of every row generated from now on, as run_sweep asks for them."""
    import aapp.pruning.run as run

    generated: list[tuple[str, str]] = []
    real = run.generate_rows

    def counting(loaded, prompts, method, *a, **k):
        generated.extend((method.name, p.id) for p in prompts)
        return real(loaded, prompts, method, *a, **k)

    monkeypatch.setattr(run, "generate_rows", counting)
    return generated


def drop_timing(cells: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "wall_time_s"} for c in cells]


# ------------------------------------------------------------------ a full run

def test_sweep_reports_every_cell_against_dense(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    summaries = run_sweep(make_config(inputs, out, text=str(inputs.text)), progress=True)
    assert capsys.readouterr().out == ""  # stdout stays for data
    names = [(s.method, s.ratio) for s in summaries]
    assert names == [("dense", 0.0), ("pp", 0.3), ("pp", 0.5), ("aapp", 0.3), ("aapp", 0.5)]
    assert sorted(p.name for p in out.iterdir()) == ["cells", "refusal_vs_flops.png", "refusal_vs_perplexity.png", "refusal_vs_ratio.png",
                                                     "results.jsonl", "summary.csv", "summary.json"]
    # One file per cell (method x ratio x set) and one perplexity per method x ratio.
    assert len(list((out / CELLS).glob("*.jsonl"))) == 2 * 5 and len(list((out / CELLS).glob("*.ppl.json"))) == 5
    paired = {(s.method, s.ratio): s.paired for s in summaries}
    assert paired[("aapp", 0.3)].baseline == "pp" and paired[("pp", 0.3)] is None

    rows = read_rows(out / "results.jsonl")
    ids = ["h0", "h1", "h2", "h3", "h4", "b0", "b1", "b2", "b3"]
    by_cell: dict[tuple, list[dict]] = {}
    for r in rows:
        by_cell.setdefault((r["method"], r["ratio"]), []).append(r)
    assert list(by_cell) == names and all([r["id"] for r in v] == ids for v in by_cell.values())
    assert all(r["label"] == ("harmful" if r["id"][0] == "h" else "benign") for r in rows)
    # Dense is the reference: every pruned row carries the dense verdict for its prompt.
    dense = {r["id"]: r["refused"] for r in by_cell[("dense", 0.0)]}
    for key in names[1:]:
        assert [r["dense_refused"] for r in by_cell[key]] == [dense[i] for i in ids]

    doc = json.loads((out / "summary.json").read_text())
    cells = {(c["method"], c["ratio"]): c for c in doc["cells"]}
    assert doc["meta"]["n_harmful"] == 5 and doc["meta"]["n_benign"] == 4 and doc["meta"]["world_size"] == 1
    d = cells[("dense", 0.0)]
    assert d["agreement"] is None and d["gate_fire_rate"] is None and d["flops_fraction"] == pytest.approx(1.0)
    for key in names[1:]:
        c = cells[key]
        assert c["n_harmful"] == 5 and c["n_benign"] == 4 and c["agreement"]["n"] == 9
        assert c["refusal_rate"]["ci95"] is not None and c["over_refusal"]["ci95"] is not None
        # FLOPs include the probe: recompute from the rows.
        f = [r["flops"] for r in by_cell[key]]
        assert any(x["probe"] > 0 for x in f)
        spent = sum(x["pruned"] + x["probe"] + x["bias"] for x in f)
        assert c["flops_fraction"] == pytest.approx(spent / sum(x["dense"] for x in f))
        assert c["flops_fraction"] < 1.0
        assert c["wall_time_s"] == pytest.approx(sum(r["latency_s"] for r in by_cell[key]))
        assert (c["gate_fire_rate"] is not None) == (key[0] == "aapp")
    for c in cells.values():
        assert c["perplexity"] is not None and c["perplexity"] > 1
    # Pruning harder costs perplexity on a random model too: it is not the dense number copied.
    assert cells[("pp", 0.5)]["perplexity"] != cells[("dense", 0.0)]["perplexity"]


def test_gate_variants_and_several_harmful_sets_in_one_sweep(inputs, tmp_path):
    """The evidence table's shape: aapp per gate side by side, refusal per harmful set, held-out AUROC."""
    second = tmp_path / "more-harmful.jsonl"
    second.write_text("".join(json.dumps({"id": f"x{i}", "prompt": t}) + "\n" for i, t in enumerate(HARMFUL[5:])))
    cfg = make_config(inputs, tmp_path / "o", methods=("dense", "aapp:always", "aapp:never", "aapp:direction"),
                      ratios=(0.5,), harmful=f"{inputs.harmful},{second}")
    summaries = {(s.method, s.ratio): s for s in run_sweep(cfg, progress=False)}
    assert list(summaries) == [("dense", 0.0), ("aapp:always", 0.5), ("aapp:never", 0.5), ("aapp:direction", 0.5)]
    rows = read_rows(tmp_path / "o" / "results.jsonl")
    sets = {str(inputs.harmful): 5, str(second): 3, str(inputs.benign): 4}
    for key, s in summaries.items():
        cell = [r for r in rows if (r["method"], r["ratio"]) == key]
        assert {name: sum(r["set"] == name for r in cell) for name in sets} == sets
        assert {k: r.n for k, r in s.refusal_by_set.items()} == {str(inputs.harmful): 5, str(second): 3}
        for name, rate in s.refusal_by_set.items():
            assert rate.k == sum(r["refused"] for r in cell if r["set"] == name)
        if key[0] == "dense":
            assert s.gate_auroc is None and not s.gate_fire_by_label
            continue
        assert {r["gate"]["kind"] for r in cell} == {key[0].split(":")[1]}
        fired = {lab: [r["gate"]["fired"] for r in cell if r["label"] == lab] for lab in ("harmful", "benign")}
        assert {lab: (rate.k, rate.n) for lab, rate in s.gate_fire_by_label.items()} == {
            lab: (sum(f), len(f)) for lab, f in fired.items()}
    # Only a scoring gate has per-prompt scores, so only it has an AUROC, computed from the rows.
    assert summaries[("aapp:always", 0.5)].gate_auroc is None
    cell = [r for r in rows if r["method"] == "aapp:direction"]
    pos = [r["gate"]["sample_score"] for r in cell if r["label"] == "harmful"]
    neg = [r["gate"]["sample_score"] for r in cell if r["label"] == "benign"]
    expected = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert summaries[("aapp:direction", 0.5)].gate_auroc == pytest.approx(expected)
    # The batch's score is the max of its prompts' own scores; a batch holds one set.
    for name in sets:
        in_set = [r for r in cell if r["set"] == name]
        for i in range(0, len(in_set), 2):
            batch = in_set[i:i + 2]
            assert batch[0]["gate"]["score"] == pytest.approx(max(r["gate"]["sample_score"] for r in batch))
    assert all(not r["gate"]["fired"] for r in rows if r["method"] == "aapp:never")


def test_only_dense_and_no_text(inputs, tmp_path):
    summaries = run_sweep(make_config(inputs, tmp_path / "o", methods=("dense",), ratios=(), benign=None, prune=None),
                          progress=False)
    assert [(s.method, s.ratio, s.n, s.perplexity) for s in summaries] == [("dense", 0.0, 5, None)]


def test_a_zero_percent_cell_still_writes_its_report(inputs, tmp_path):
    """12 harmful prompts a random model never refuses: 0/12, where Wilson's bound used to miss 0."""
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"id": f"m{i}", "prompt": HARMFUL[i % len(HARMFUL)] + f" ({i})"}) + "\n"
                            for i in range(12)))
    out = tmp_path / "o"
    summaries = run_sweep(make_config(inputs, out, methods=("dense",), ratios=(), prune=None, harmful=str(many), benign=None,
                                      max_new_tokens=2, batch_size=4), progress=False)
    assert [(s.refusal_rate.k, s.refusal_rate.n) for s in summaries] == [(0, 12)]
    assert summaries[0].refusal_rate.ci[0] == 0.0
    assert sorted(p.name for p in out.iterdir()) == ["cells", "refusal_vs_ratio.png", "results.jsonl", "summary.csv",
                                                     "summary.json"]


def test_prompts_longer_than_the_context_are_left_out_or_cut(inputs, tmp_path, capsys):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(inputs.model).max_position_embeddings
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "long", "prompt": "ab " * context}) + "\n"
                    + json.dumps({"id": "short", "prompt": HARMFUL[0]}) + "\n")
    cfg = make_config(inputs, tmp_path / "o", methods=("dense",), ratios=(), prune=None, harmful=str(long), benign=None,
                      max_new_tokens=2, batch_size=2)
    (s,) = run_sweep(cfg, progress=False)
    assert s.n == 1 and "prompt long:" in capsys.readouterr().err
    (s,) = run_sweep(make_config(inputs, tmp_path / "t", methods=("dense",), ratios=(), prune=None, harmful=str(long), benign=None,
                                 max_new_tokens=2, batch_size=2, truncate=True), progress=False)
    rows = {r["id"]: r for r in read_rows(tmp_path / "t" / "results.jsonl")}
    assert s.n == 2 and rows["long"]["truncated_tokens"] > 0 and "truncated_tokens" not in rows["short"]
    assert rows["long"]["prompt_tokens"] + 2 <= context


# ------------------------------------------------------------------ resume

def kill_when_written(proc: subprocess.Popen, cells: Path, n: int, timeout: float = 180) -> None:
    """SIGKILL `proc` once `cells` holds `n` finished cell files."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the sweep ended before it was killed:\n{proc.stderr.read().decode()[-3000:]}")
            if cells.is_dir() and len(list(cells.glob("*.jsonl"))) >= n:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the sweep wrote too few cells in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_sweep_killed_and_resumed_gives_the_rows_of_an_uninterrupted_one(inputs, tmp_path, monkeypatch):
    # Batches of one prompt, 4 + 4 prompts in two sets, 3 methods: 6 cells of 4 batches. AAPP refreshes
    # its gate every 2 batches, so its cells carry state from batch to batch.
    kw = dict(methods=("aapp", "pp"), ratios=(0.5,), batch_size=1, max_new_tokens=3, limit=4, aapp=dict(refresh=2))
    out = tmp_path / "killed"
    spec = tmp_path / "cfg.json"
    spec.write_text(config_json(settings_of(inputs, out, **kw)))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(spec), "0.1"], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clean_out = tmp_path / "clean"
    clean = run_sweep(make_config(inputs, clean_out, **kw), progress=False)  # while the child starts up
    kill_when_written(proc, out / CELLS, n=3)
    finished = {p.name: p.read_bytes() for p in (out / CELLS).glob("*.jsonl")}
    assert 3 <= len(finished) < 6 and not (out / "results.jsonl").exists()

    with pytest.raises(InputError, match="pass resume"):
        run_sweep(make_config(inputs, out, **kw), progress=False)
    with pytest.raises(InputError, match="other settings.*max_new_tokens"):
        run_sweep(make_config(inputs, out, **(kw | dict(max_new_tokens=5, resume=True))), progress=False)

    generated = count_generated(monkeypatch)
    resumed = run_sweep(make_config(inputs, out, **(kw | dict(resume=True))), progress=False)
    monkeypatch.undo()

    # Finished cells were read, not generated again, nor rewritten; the others ran whole.
    done = {(r["method"], r["id"]) for name in finished for r in read_rows(out / CELLS / name)[1:]}
    ids = [f"h{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    assert sorted(generated) == sorted({(m, p) for m in ("dense", "aapp", "pp") for p in ids} - done)
    assert {name: (out / CELLS / name).read_bytes() for name in finished} == finished

    got, want = read_rows(out / "results.jsonl"), read_rows(clean_out / "results.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert len(got) == 24 and strip(got) == strip(want)
    assert drop_timing([s.to_dict() for s in resumed]) == drop_timing([s.to_dict() for s in clean])


def test_failed_run_leaves_existing_out_untouched_and_resumes(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    old = {"results.jsonl": b'{"old": 1}\n', "summary.json": b'{"old": true}\n', "notes.txt": b"mine\n"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    import aapp.pruning.run as run

    original = run.generate_rows
    batches = []

    def failing(*a, on_batch=None, **k):
        def cb(n):
            on_batch(n)
            batches.append(n)
            if len(batches) == 6:
                raise RuntimeError("simulated crash")
        return original(*a, on_batch=cb, **k)

    monkeypatch.setattr(run, "generate_rows", failing)
    cfg = settings_of(inputs, out, methods=("dense", "pp"), ratios=(0.3,))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sweep(make_config(inputs, **cfg), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old
    # dense on the harmful set (3 batches of 2) and on the benign set (2) are whole; pp's first cell is not.
    assert sorted(p.name for p in (out / CELLS).iterdir()) == sorted(
        rows_name("dense", 0.0, s) for s in (str(inputs.harmful), str(inputs.benign)))
    monkeypatch.undo()
    generated = []
    monkeypatch.setattr(run, "generate_rows", lambda loaded, prompts, *a, **k: (
        generated.extend(prompts), original(loaded, prompts, *a, **k))[1])
    run_sweep(make_config(inputs, **(cfg | dict(resume=True))), progress=False)
    assert len(generated) == 9
    assert (out / "notes.txt").read_bytes() == b"mine\n"
    assert len(read_rows(out / "results.jsonl")) == 2 * 9


def test_dense_cells_are_reused_by_a_sweep_with_other_pruning_settings(inputs, tmp_path, monkeypatch):
    import aapp.pruning.run as run

    out = tmp_path / "o"
    run_sweep(make_config(inputs, out, methods=("dense",), ratios=(), prune=None), progress=False)
    generated = []
    real = run.generate_rows
    monkeypatch.setattr(run, "generate_rows", lambda loaded, prompts, method, *a, **k: (
        generated.extend((method.name, p.id) for p in prompts), real(loaded, prompts, method, *a, **k))[1])
    kw = dict(methods=("dense", "pp"), ratios=(0.5,), prune=dict(dense_layers=1, channel_multiple=8), resume=True)
    summaries = run_sweep(make_config(inputs, out, **kw), progress=False)
    assert {m for m, _ in generated} == {"pp"} and [(s.method, s.ratio) for s in summaries] == [
        ("dense", 0.0), ("pp", 0.5)]
    with pytest.raises(InputError, match=r"pp@0\.5\..*other settings.*channel_multiple"):
        run_sweep(make_config(inputs, out, **(kw | dict(prune=dict(dense_layers=1, channel_multiple=16)))),
                  progress=False)


def test_a_sorted_cell_is_what_aapp_prune_writes_for_its_set(inputs, tmp_path):
    """--sort-by-length batches a cell's set as `aapp prune --sort-by-length` does, rows in input order."""
    from aapp.calibration.store import load_calibration
    from aapp.methods import make_method
    from aapp.models.loading import load_model
    from aapp.prompts import load_prompts
    from aapp.pruning.engine import PruneOptions
    from aapp.pruning.run import GenerationSettings, generate_rows

    out = tmp_path / "o"
    run_sweep(make_config(inputs, out, methods=("pp",), ratios=(0.5,), benign=None, sort_by_length=True),
              progress=False)
    cell = read_rows(out / CELLS / rows_name("pp", 0.5, str(inputs.harmful)))[1:]
    loaded = load_model(str(inputs.model), device="cpu", dtype="float32")
    prompts = load_prompts(str(inputs.harmful), label="harmful")
    want = list(generate_rows(loaded, prompts, make_method("pp"), PruneOptions(ratio=0.5, dense_layers=1,
                                                                                channel_multiple=16),
                              load_calibration(inputs.calib), GenerationSettings(4, 2, sort_by_length=True)))
    # As written (JSON: a tuple reads back as a list).
    strip = lambda rows: [{k: v for k, v in json.loads(json.dumps(r)).items() if k not in TIMING}  # noqa: E731
                          for r in rows]
    assert strip(cell) == strip(want) and [r["id"] for r in cell] == [f"h{i}" for i in range(5)]
    # Provenance too: it said sort_by_length false while the sweep sorted, so a row re-run from it batched otherwise.
    assert cell[0]["provenance"]["options"]["generation"] == {"max_new_tokens": 4, "batch_size": 2,
                                                              "sort_by_length": True}


def test_an_unfinished_sweep_of_an_older_aapp_is_a_clear_error(inputs, tmp_path):
    (tmp_path / "o" / ".partial").mkdir(parents=True)
    with pytest.raises(InputError, match="older aapp"):
        run_sweep(make_config(inputs, tmp_path / "o", resume=True), progress=False)


# ------------------------------------------------------------------ the store

def test_a_cell_file_is_reused_only_with_its_own_settings(tmp_path):
    store = CellStore(tmp_path)
    assert store.load("pp@0.5.x.jsonl", {"k": 1}) is None and not store.exists()
    rows = [{"id": "a", "method": "pp", "ratio": 0.5}, {"id": "b", "method": "pp", "ratio": 0.5}]
    store.save("pp@0.5.x.jsonl", {"k": 1, "ratios": (0.5,)}, rows)
    assert store.exists() and store.load("pp@0.5.x.jsonl", {"k": 1, "ratios": (0.5,)}) == rows
    with pytest.raises(InputError, match=r"other settings \(k: 1 then, 2 now\)"):
        store.load("pp@0.5.x.jsonl", {"k": 2, "ratios": (0.5,)})
    (store.dir / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(InputError, match="not a sweep cell"):
        store.load("bad.jsonl", {"k": 1})
    assert [p.name for p in tmp_path.iterdir()] == [CELLS]


def test_cell_names_keep_two_files_with_one_stem_apart():
    assert rows_name("aapp:kl", 0.3, "advbench") == "aapp:kl@0.3.advbench.jsonl"
    a, b = rows_name("pp", 0.3, "a/harmful.jsonl"), rows_name("pp", 0.3, "b/harmful.jsonl")
    assert a != b and a.startswith("pp@0.3.harmful-") and "/" not in a


# ------------------------------------------------------------------ bad input

def test_bad_input_is_a_clear_error_before_any_work(inputs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (dict(harmful=str(empty)), "no prompts"),
        (dict(out=str(a_file)), "not a directory"),
        (dict(out=str(a_file / "sub")), "cannot create"),
        (dict(harmful=None, benign=None), "needs prompts"),
        (dict(methods=("dense", "magic")), "unknown method 'magic'"),
        (dict(ratios=(0.3, 1.0)), r"must be in \(0, 1\)"),
        (dict(calib=None), "needs a calibration file"),
        (dict(benign=str(inputs.harmful)), "in both"),
        (dict(harmful=f"{inputs.harmful},{inputs.harmful}"), "in both"),
        (dict(judge=str(tmp_path / "nojudge")), "judge "),
        (dict(batch_size=0), "batch_size"),
        (dict(text="builtin", ppl_windows=0), "ppl_windows"),
    ]
    for kw, message in cases:
        with pytest.raises((InputError, CalibrationError), match=message):  # a missing calibration is the latter
            run_sweep(make_config(inputs, kw.pop("out", tmp_path / "o"), **kw), progress=False)
    assert not (tmp_path / "o" / CELLS).exists()


def test_text_shorter_than_a_window_fails_before_generation(inputs, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(PROSE) + "\n")
    with pytest.raises(InputError, match="shorter than one perplexity window"):
        run_sweep(make_config(inputs, tmp_path / "o", text=str(short), ppl_seq_len=4096), progress=False)
    assert not (tmp_path / "o" / CELLS).exists()


def test_aapp_without_alignment_statistics_fails_before_generation(inputs, tmp_path):
    from aapp.calibration.store import load_calibration, save_calibration

    cal = load_calibration(inputs.calib)
    cal.sections.clear()
    plain = tmp_path / "plain.safetensors"
    save_calibration(cal, plain)
    with pytest.raises(AappError, match="aapp.*alignment"):
        run_sweep(make_config(inputs, tmp_path / "o", calib=str(plain)), progress=False)


def test_parse_lists():
    from aapp.evaluation.sweep import parse_methods, parse_ratios

    assert parse_methods(" dense, pp,,aapp ") == ("dense", "pp", "aapp")
    assert parse_ratios("0.1,0.25, 0.4") == (0.1, 0.25, 0.4)
    with pytest.raises(InputError, match="comma-separated"):
        parse_ratios("0.1;0.2")
    cells = CellSettings(methods=("pp", "dense", "pp"), ratios=(0.2, 0.1, 0.2))
    assert cells.methods == ("pp", "dense") and cells.ratios == (0.2, 0.1)
    assert CellSettings(methods=("aapp:kl", "aapp")).methods == ("aapp:kl", "aapp")
    for bad, why in (("aapp:loud", "method variant 'aapp:loud'"), ("pp:kl", "method variant 'pp:kl'"),
                     ("ppp", "method 'ppp'")):
        with pytest.raises(InputError, match=f"methods: unknown {why}"):
            CellSettings(methods=(bad,))


def test_a_set_may_name_its_own_count():
    sets = PromptSettings(harmful="advbench:100,my:file.jsonl", benign="xstest-safe:250", sample=7).sets()
    assert [(s.spec, s.label, s.sample) for s in sets] == [
        ("advbench", "harmful", 100), ("my:file.jsonl", "harmful", 7), ("xstest-safe", "benign", 250)]
    with pytest.raises(InputError, match="at least 1"):
        PromptSettings(harmful="advbench:0")


def test_a_cell_is_reused_by_a_sweep_that_adds_another_methods_options(inputs, tmp_path, monkeypatch):
    # A cell's identity holds the options its own method takes: giving aapp an option later reruns
    # aapp's cells, not pp's (and an option for pp alone, by name, reruns pp's).
    kw = dict(methods=("pp",), ratios=(0.5,), max_new_tokens=3, limit=2)
    out = tmp_path / "out"
    run_sweep(make_config(inputs, out, **kw), progress=False)
    generated = count_generated(monkeypatch)
    more = kw | dict(methods=("pp", "aapp"), aapp={"aapp.budget_shift": 0.4}, resume=True)
    run_sweep(make_config(inputs, out, **more), progress=False)
    assert {m for m, _ in generated} == {"aapp"}
    with pytest.raises(InputError, match="other settings"):
        run_sweep(make_config(inputs, out, **(more | dict(aapp={"pp.probe_samples": 0.5}))), progress=False)
