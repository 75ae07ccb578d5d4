"""`aapp prune --out FILE` stopped by SIGINT or SIGTERM: one line, no temp file, the finished rows
kept as a valid prefix in FILE.partial, and `--resume` finishing them into what an uninterrupted
run writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_cli import REPO, aapp, one_line_error

# Fields that measure time, not what the run computed.
TIMING = ("latency_s", "batch_latency_s", "prefill_s", "decode_s")


def _computed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def many(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("interrupt")
    # Enough prompts that the run is still going when the first row is on disk.
    (d / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"say something about {i}"}) + "\n"
                                             for i in range(300)))
    return d


def _args(model, d, out, *extra, new_tokens=8):
    return ["prune", "--model", model, "--method", "dense", "--input", d / "prompts.jsonl", "--max-new-tokens", new_tokens,
            "--batch-size", 2, "--out", out, *extra]


def _interrupted_run(args, out, signum):
    """Start `aapp` with `args`, send `signum` once its temp output holds a row, and wait for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "aapp.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while time.monotonic() < deadline and p.poll() is None:
        temps = list(out.parent.glob(f".{out.name}.*.tmp"))
        if temps and temps[0].exists() and b"\n" in temps[0].read_bytes():
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signum)
    stdout, stderr = p.communicate(timeout=300)
    return p.returncode, stdout, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_finished_rows_and_resume_completes_them(many, tiny_model_dir, tmp_path, signum):
    out = tmp_path / "rows.jsonl"
    rc, stdout, stderr = _interrupted_run(_args(tiny_model_dir, many, out), out, signum)
    assert rc == 128 + signum, stderr
    assert stdout == "" and "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and stderr.strip().splitlines()[-1] == lines[0], stderr
    assert "--resume" in lines[0] and "rows.jsonl.partial" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl.partial"]  # no temp, no half-made output
    kept = _rows(out.with_name("rows.jsonl.partial"))
    assert 0 < len(kept) < 300 and f"kept {len(kept)} of 300 rows" in lines[0]
    assert [r["id"] for r in kept] == [f"q{i}" for i in range(len(kept))]  # a prefix, in input order

    r = aapp(*_args(tiny_model_dir, many, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    whole = tmp_path / "whole.jsonl"
    assert aapp(*_args(tiny_model_dir, many, whole)).returncode == 0
    assert _computed(_rows(out)) == _computed(_rows(whole))
    assert _rows(out)[: len(kept)] == kept


def test_resume_refuses_rows_made_with_other_settings(many, tiny_model_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    first = _args(tiny_model_dir, many, out, "--limit", 4)
    assert aapp(*first).returncode == 0
    before = out.read_text()
    r = aapp(*_args(tiny_model_dir, many, out, "--limit", 6, "--resume", new_tokens=4))
    one_line_error(r, "row 1", "options.generation.max_new_tokens = 8", "this run has 4")
    r = aapp(*_args(tiny_model_dir, many, out, "--limit", 6, "--seed", 1, "--sample", 6, "--resume"))
    one_line_error(r, "answers another prompt")
    # Rows written before aapp recorded provenance cannot be checked, so they are not continued.
    out.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "provenance"}) + "\n"
                           for row in _rows(out)))
    one_line_error(aapp(*_args(tiny_model_dir, many, out, "--limit", 6, "--resume")), "records no provenance")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    assert len(before.splitlines()) == 4


def test_resume_needs_an_output_file(many, tiny_model_dir):
    one_line_error(aapp(*_args(tiny_model_dir, many, "-", "--limit", 2, "--resume")), "--resume", "--out")
