"""One table (aapp.cli.MODES) decides which options each mode of a command takes; any other given is
a one-line error, never a silent no-op. Also the options a command refuses outright (export's plan)."""

from __future__ import annotations

import pytest

from tests.inprocess import run


def one_line(code: int, out: str, err: str, *needles: str) -> str:
    assert code == 1 and out == "", (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aapp: error:") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, flag", [
    (["--sample", "2"], "--sample"), (["--seed", "3"], "--seed"), (["--ratios", "0.2"], "--ratios"),
    (["--methods", "pp"], "--methods"), (["--max-new-tokens", "4"], "--max-new-tokens"),
    (["--batch-size", "2"], "--batch-size"), (["--device", "cpu"], "--device"), (["--dtype", "float32"], "--dtype"),
    (["--calib", "c"], "--calib"), (["--opt", "protect=0.2"], "--opt"), (["--harmful", "advbench"], "--harmful"),
    (["--truncate"], "--truncate"), (["--no-truncate"], "--truncate"), (["--ppl", "builtin"], "--ppl"),
])
def test_pipe_mode_refuses_the_sweep_options(capsys, tmp_path, args, flag):
    rows = tmp_path / "g.jsonl"
    rows.write_text('{"prompt": "x", "completion": "No."}\n')
    one_line(*run(["eval-refusal", rows, *args, "--out", tmp_path / "ev"], capsys),
             f"{flag} does not apply in pipe mode: it is for sweep mode", "pipe mode takes GENERATIONS, --reference")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("args, flag", [
    (["--reference", "r.jsonl"], "--reference"), (["--allow-model-mismatch"], "--allow-model-mismatch"),
    (["--allow-generation-mismatch"], "--allow-generation-mismatch"), (["g.jsonl"], "GENERATIONS"),
])
def test_sweep_mode_refuses_the_pipe_options(capsys, tmp_path, args, flag):
    one_line(*run(["eval-refusal", "--model", "m", "--harmful", "advbench", "--out", tmp_path / "s", *args], capsys),
             f"{flag} does not apply in sweep mode (--model): it is for pipe mode", "sweep mode takes --model")


@pytest.mark.parametrize("args, flag", [
    (["--gate-ratios", "0.2"], "--gate-ratios"), (["--dense-layers", "1"], "--dense-layers"),
    (["--gate-fpr", "0.1"], "--gate-fpr"), (["--harmful", "advbench"], "--harmful"),
    (["--harmless", "calib-harmless"], "--harmless"), (["--sample", "3"], "--sample"), (["--limit", "3"], "--limit"),
    (["--seed", "1"], "--seed"), (["--update"], "--update"),
])
def test_calibrate_without_alignment_refuses_the_alignment_options(capsys, tmp_path, args, flag):
    out = tmp_path / "c.safetensors"
    one_line(*run(["calibrate", "--no-alignment", "--model", tmp_path / "none", "--out", out, *args], capsys),
             f"{flag} does not apply with --no-alignment: it is for alignment statistics", "--no-alignment takes --out")
    assert not out.exists()


def test_the_help_groups_the_options_by_mode(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = run(["eval-refusal", "--help"], capsys)
    assert code == 0
    panels = {}
    for line in out.splitlines():
        if line.startswith("╭─ "):
            name = line.strip("╭─ ").split(" ─")[0]
        elif line.startswith("│ --"):
            panels.setdefault(name, []).append(line.split()[1])
    assert {"--seed", "--sample", "--device", "--model"} <= set(panels["Sweep mode"])
    assert {"--reference", "--allow-model-mismatch"} <= set(panels["Pipe mode"])
    assert {"--judge", "--out", "--mix"} <= set(panels["Both modes"])


@pytest.mark.parametrize("args, needles", [
    (["--method", "wanda-sp", "--opt", "dense_layers=1"], ["option dense_layers does not apply to export",
                                                           "every layer alike"]),
    (["--method", "flap", "--opt", "backend=torch"], ["option backend does not apply to export"]),
    (["--method", "dense"], ["dense prunes nothing, so there is nothing to export"]),
])
def test_export_refuses_what_it_would_ignore(capsys, tmp_path, args, needles):
    one_line(*run(["export", "--calib", "c", "--out", tmp_path / "e", *args], capsys), *needles)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("args, needle", [
    (["prune", "--seed", "3"], "--seed needs --sample: it seeds the draw of --sample"),
    (["prune", "--resume"], "--resume needs --out"),
    (["prune", "--resume", "--out", "-"], "--resume needs --out"),
    (["eval-refusal", "g.jsonl", "--allow-model-mismatch"], "--allow-model-mismatch needs --reference"),
    (["eval-refusal", "g.jsonl", "--allow-generation-mismatch"], "--allow-generation-mismatch needs --reference"),
])
def test_an_option_without_the_one_it_needs_is_an_error(capsys, args, needle):
    """`prune --seed 3` without --sample drew nothing and recorded nothing: accepted, and no effect."""
    one_line(*run(args, capsys), needle)


@pytest.mark.parametrize("args", [
    ["eval-refusal", "g.jsonl", "--seed", "1"],
    ["calibrate", "--no-alignment", "--out", "c.safetensors", "--gate-ratios", "0.2"],
    ["prune", "--seed", "1"],
    ["prune", "--out", "/no/such/dir/x.jsonl"],
])
def test_argument_errors_come_before_torch_is_imported(args):
    """They took 2-3 s unloaded (9-17 s under load) behind the heavy imports."""
    import subprocess
    import sys

    code = ("import sys\nfrom aapp.cli import main\nsys.argv = ['aapp', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["1", "False"], (r.stdout, r.stderr)
    assert r.stderr.startswith("aapp: error:"), r.stderr
