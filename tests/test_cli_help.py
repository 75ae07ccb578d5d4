"""What a newcomer reads first: --version, help at 100 columns, `models` data on stdout, "did you mean"."""

import json
import re
import sys
from pathlib import Path

import pytest

from aapp.errors import did_you_mean
from aapp.models import registry
from aapp.models.synthetic import SHAPES
from tests.inprocess import run
from tests.test_cli import aapp


def test_version(capsys):
    from importlib.metadata import version

    code, out, err = run(["--version"], capsys)
    assert (code, out) == (0, f"aapp {version('aapp')}\n")


def test_models_list_is_data_on_stdout_tab_separated_in_a_pipe(capsys):
    code, out, err = run(["models", "list"], capsys)
    assert code == 0 and "aapp models" not in err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [r[0] for r in rows] == list(registry.ALIASES)  # `aapp models list | grep qwen` finds it
    assert all(len(r) == 7 for r in rows) and rows[0][5] == "default" and rows[0][2].isdigit()
    code, out, _ = run(["models", "list", "--json"], capsys)
    assert [r["alias"] for r in json.loads(out)] == list(registry.ALIASES)
    # An uncached alias's size on disk is unknown: '-' as JSON's null, not 0.
    assert [r[4] for r in rows] == ["-" if r["disk_size"] is None else str(r["disk_size"]) for r in json.loads(out)]


def test_models_list_says_an_uncached_size_is_unknown(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AAPP_CACHE", str(tmp_path))  # nothing cached
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0 and {line.split("\t")[4] for line in out.splitlines()} == {"-"}
    code, out, _ = run(["models", "list", "--json"], capsys)
    assert {r["disk_size"] for r in json.loads(out)} == {None}


def test_models_list_is_a_table_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0 and "aapp models" in out and "qwen2.5-coder-0.5b-instruct *" in out
    assert "…" not in out


def test_models_pull_prints_the_path_on_stdout(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "pull", lambda alias, force, progress: tmp_path / alias)
    code, out, err = run(["models", "pull", "smollm2-135m-instruct"], capsys)
    assert code == 0 and out == f"{tmp_path / 'smollm2-135m-instruct'}\n"
    assert Path(out.strip()).name == "smollm2-135m-instruct"


@pytest.mark.parametrize("args, needle", [
    (["models", "pull", "smollm2"], "unknown model alias 'smollm2' (did you mean 'smollm2-135m-instruct'?)"),
    (["prune", "--model", "smollm2", "--method", "dense", "-i", "calib-harmless"],
     "unknown model 'smollm2' (did you mean 'smollm2-135m-instruct'?)"),
    (["models", "random", "llama2", "--out", "never"], "unknown shape 'llama2' (did you mean 'llama2-7b'?)"),
    (["models", "random", "tiny-lama", "--out", "never"], "(did you mean 'tiny-llama'?)"),
])
def test_unknown_names_suggest_the_one_meant(capsys, args, needle):
    code, out, err = run(args, capsys)
    assert code == 1 and needle in err.strip().splitlines()[-1] and out == ""


def test_did_you_mean():
    assert did_you_mean("smollm2", registry.ALIASES) == " (did you mean 'smollm2-135m-instruct'?)"
    assert did_you_mean("SmolLM2", registry.ALIASES) == " (did you mean 'smollm2-135m-instruct'?)"
    assert did_you_mean("tiny", SHAPES) == " (did you mean 'tiny-llama', 'tiny-qwen2' or 'tiny-gemma3'?)"
    assert did_you_mean("gemma3-12", SHAPES) == " (did you mean 'gemma3-12b'?)"
    assert did_you_mean("qwen2.5-coder-0.5b-instrcut", registry.ALIASES) == \
        " (did you mean 'qwen2.5-coder-0.5b-instruct'?)"
    assert did_you_mean("mistral", SHAPES) == did_you_mean("", SHAPES) == ""


@pytest.mark.parametrize("command", [[], ["models"], ["models", "list"], ["models", "pull"], ["models", "random"],
                                     ["calibrate"], ["prune"], ["eval-refusal"]], ids=" ".join)
def test_help_reads_at_100_columns(command):
    r = aapp(*command, "--help", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100 and "…" not in r.stdout
    # Flags carry no type label, and no argument reads as a set ("{alias}"): only Typer's own --help row keeps <bool>.
    assert [line for line in lines if "<bool>" in line and "--help" not in line] == []
    assert not re.search(r"\{[a-z]+\}", r.stdout)


def test_random_seed_help_names_what_it_seeds():
    r = aapp("models", "random", "--help", env={"COLUMNS": "100"})
    seed = next(line for line in r.stdout.splitlines() if "--seed" in line)
    assert "random weights" in seed and "--sample" not in r.stdout
