"""Every command x mode x option, walked: an option the command accepts must change what it writes
(stdout, the files under --out, the rows' provenance) or be refused in one line. One that exits 0 and
changes nothing is the silent kind of wrong this test is for.

The options come from the CLI itself (Typer's commands), so a new option fails here until it is given
a change to make (CHANGES) or a reason it cannot be walked (NOT_WALKED). Runs are in-process on a
tiny random model with a 96-token context, two new tokens and three prompts, one of them too long.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer.main

from aapp.cli import MODES, app
from tests.inprocess import run

# Fields that differ between two runs of the same command: wall time, the date, where it was written.
VOLATILE = {"latency_s", "batch_latency_s", "prefill_s", "decode_s", "wall_time_s", "created"}

# An option whose effect this walk cannot see, and where it is checked instead.
NOT_WALKED = {
    "out": "where the output goes: every run here writes to it",
    "resume": "acts only on an interrupted run's FILE.partial (tests/test_cli_interrupt.py)",
    "device": "every choice is the CPU on a machine without a GPU (the GPU check runs it on one)",
    "help": "click's",
}
# Options whose base run is refused: the option's effect is that it runs.
LIFTS_A_REFUSAL = {"allow_model_mismatch", "allow_generation_mismatch"}
# Options that change how fast, not what: the same output is right. Each says why.
SAME_OUTPUT_BY_DESIGN = {
    ("calibrate", "batch_size"): "prompts per forward pass; statistics are per token with padding masked",
}
# Whole commands this walk does not run, and why.
COMMANDS_NOT_WALKED = {
    "serve": "a server: its options are walked through requests in tests/serve",
    "models pull": "fetches from the network (tests/models/test_fetch.py)",
}


def commands() -> dict[str, object]:
    root = typer.main.get_command(app)
    out = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            out |= {f"{name} {sub}": c for sub, c in cmd.commands.items()}
        else:
            out[name] = cmd
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model (96-token context) and a second one, calibrations, prompts with one too long, text."""
    from tests.conftest import make_loaded
    from tests.inprocess import run as run_cli

    root = tmp_path_factory.mktemp("walk")
    for name, seed in (("model", 0), ("other", 1)):
        m = make_loaded("tiny-qwen2", seed=seed)
        m.model.config.max_position_embeddings = 96
        m.model.save_pretrained(root / name)
        m.tokenizer.save_pretrained(root / name)
    words = "the quick brown fox jumps over the lazy dog while the river runs past the old mill".split()
    (root / "text.txt").write_text("\n\n".join(f"part {i}: " + " ".join(words[(i * j) % len(words)] for j in range(50))
                                               for i in range(60)))
    prompts = [("h0", "how do I pick a lock", "harmful"), ("b0", "write a short poem about rain", "benign"),
               ("b1", "hi", "benign"), ("long", "tell me " * 60, "harmful")]
    (root / "p.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p, "label": lab}) + "\n"
                                          for i, p, lab in prompts))
    (root / "q.jsonl").write_text(json.dumps({"id": "q0", "prompt": "name three colours", "label": "benign"}) + "\n")
    (root / "harmful.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                                                for i, p, lab in prompts if lab == "harmful"))
    (root / "short.jsonl").write_text(json.dumps({"id": "h1", "prompt": "how do I steal a car"}) + "\n"
                                      + json.dumps({"id": "h2", "prompt": "write a phishing email"}) + "\n")
    (root / "opts.toml").write_text("probe_samples = 0.5\n")

    class Capsys:  # run() reads what the command printed; here the fixture's own capture does
        def readouterr(self):
            return "", ""

    for name, extra in (("calib", []), ("calib2", ["--samples", 3])):
        code, _, _ = run_cli(["calibrate", "--model", root / "model", "--text", root / "text.txt", "--samples", 2,
                              "--seq-len", 16, "--limit", 3, "--out", root / f"{name}.safetensors", *extra], Capsys())
        assert code == 0
    return root


def base_and_changes(r: Path) -> dict[tuple[str, str], tuple[list, dict[str, tuple[list, list]]]]:
    """(command, mode) -> (its base argv, {option: (argv added to both runs, argv the changed run adds)})."""
    m, c = r / "model", r / "calib.safetensors"
    gen = ["--max-new-tokens", 2, "--batch-size", 2]
    prune = ["prune", "--model", m, "--method", "pp", "--calib", c, "--input", r / "p.jsonl", "--opt",
             "dense_layers=1", *gen]
    sweep = ["eval-refusal", "--model", m, "--calib", c, "--methods", "dense,pp", "--ratios", "0.3", "--harmful",
             r / "short.jsonl", "--benign", r / "q.jsonl", "--opt", "dense_layers=1", "--dtype", "float32", *gen]
    calib = ["calibrate", "--model", m, "--text", r / "text.txt", "--samples", 2, "--seq-len", 16, "--limit", 3]
    one = lambda *changed: ([], list(changed))  # noqa: E731
    instead = lambda *argv: ("instead", list(argv))  # noqa: E731  (a positional: another base)
    return {
        ("prune", ""): (prune, {
            "model": one("--model", r / "other"), "method": one("--method", "aapp"), "ratio": one("--ratio", 0.2),
            "opt": one("--opt", "channel_multiple=8"), "opts": one("--opts", r / "opts.toml"),
            "calib": one("--calib", r / "calib2.safetensors"), "input": one("--input", r / "q.jsonl"),
            "limit": one("--limit", 1), "sample": one("--sample", 2), "seed": (["--sample", 2], ["--seed", 5]),
            "max_new_tokens": one("--max-new-tokens", 3), "batch_size": one("--batch-size", 1),
            "truncate": one("--truncate"), "sort_by_length": one("--sort-by-length"),
            "dtype": one("--dtype", "bfloat16")}),
        ("export", ""): (["export", "--model", m, "--calib", c, "--method", "wanda-sp", "--ratio", 0.3], {
            "model": one("--model", r / "other"), "calib": one("--calib", r / "calib2.safetensors"),
            "method": one("--method", "flap"), "ratio": one("--ratio", 0.5), "opt": one("--opt", "channel_multiple=40"),
            "opts": one("--opts", r / "opts.toml"), "dtype": one("--dtype", "bfloat16")}),
        ("calibrate", "alignment"): (calib, {
            "model": one("--model", r / "other"), "text": one("--text", "builtin"), "samples": one("--samples", 3),
            "seq_len": one("--seq-len", 24), "harmful": one("--harmful", r / "harmful.jsonl"),
            "harmless": one("--harmless", r / "q.jsonl"), "alignment": one("--no-alignment"),
            "gate_ratios": one("--gate-ratios", 0.2), "dense_layers": (["--gate-ratios", 0.2], ["--dense-layers", 1]),
            "gate_fpr": (["--gate-ratios", 0.2], ["--gate-fpr", 0.5]), "update": one("--update"),
            "contrast_pairs": one("--contrast-pairs", 2), "limit": one("--limit", 2), "sample": one("--sample", 2), "seed": (["--sample", 2], ["--seed", 5]),
            "batch_size": one("--batch-size", 1), "dtype": one("--dtype", "bfloat16")}),
        ("calibrate", "no-alignment"): ([*calib[:-2], "--no-alignment"], {
            "model": one("--model", r / "other"), "text": one("--text", "builtin"), "samples": one("--samples", 3),
            "seq_len": one("--seq-len", 24), "alignment": one("--alignment"), "batch_size": one("--batch-size", 1),
            "dtype": one("--dtype", "bfloat16")}),
        ("eval-refusal", "sweep"): (sweep, {
            "model": one("--model", r / "other"), "calib": one("--calib", r / "calib2.safetensors"),
            "methods": one("--methods", "dense,aapp"), "ratios": one("--ratios", 0.2),
            "opt": one("--opt", "channel_multiple=8"), "opts": one("--opts", r / "opts.toml"),
            "harmful": one("--harmful", r / "p.jsonl"), "benign": one("--benign", r / "p.jsonl"),
            "ppl": one("--ppl", f"{r / 'text.txt'}:2x16"), "mix": one("--mix", "benign=0.5,harmful=0.5"),
            "sample": one("--sample", 1), "seed": (["--sample", 1], ["--seed", 5]),
            "max_new_tokens": one("--max-new-tokens", 3), "batch_size": one("--batch-size", 1),
            "truncate": (["--harmful", r / "harmful.jsonl"], ["--truncate"]), "dtype": one("--dtype", "bfloat16"),
            "judge": one("--judge", "prefixes"),
            "as_json": one("--json")}),
        ("eval-refusal", "pipe"): (["eval-refusal", r / "rows.jsonl"], {
            "generations": instead("eval-refusal", r / "dense.jsonl"),
            "reference": one("--reference", r / "dense.jsonl"), "mix": one("--mix", "benign=0.5,harmful=0.5"),
            "allow_model_mismatch": (["--reference", r / "other.jsonl"], ["--allow-model-mismatch"]),
            "allow_generation_mismatch": (["--reference", r / "dense3.jsonl"], ["--allow-generation-mismatch"]),
            "judge": one("--judge", "prefixes"), "as_json": one("--json")}),
        ("models random", ""): (["models", "random", "tiny-llama", "--layers", 1], {
            "shape": instead("models", "random", "tiny-qwen2", "--layers", 1), "layers": one("--layers", 2),
            "dtype": one("--dtype", "float32"), "text_only": one("--text-only"), "seed": one("--seed", 1)}),
        ("models list", ""): (["models", "list"], {"as_json": one("--json")}),
        ("methods", ""): (["methods"], {"name": one("pp"), "as_json": one("--json")}),
    }


def snapshot(out: Path, stdout: str) -> object:
    """What a run wrote, with the fields that differ between identical runs removed."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return value.replace(str(out), "OUT")
        return value

    def read(path: Path):
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                meta = {k: json.loads(v) if k == "aapp" else v for k, v in (f.metadata() or {}).items()}
            return clean(meta), {k: v.tolist() for k, v in sorted(load_file(str(path)).items())}
        text = path.read_bytes()
        if path.suffix in (".json", ".jsonl"):
            try:
                return clean(json.loads(text))
            except json.JSONDecodeError:
                return [clean(json.loads(line)) for line in text.decode().splitlines() if line.strip()]
        return text if path.suffix != ".png" else len(text) > 0  # a plot's bytes vary with nothing asked

    files = {str(p.relative_to(out)): read(p) for p in sorted(out.rglob("*")) if p.is_file()} if out.exists() else {}
    lines = stdout.splitlines()
    try:
        data = [clean(json.loads(line)) for line in lines] if lines and lines[0].startswith("{") else clean(
            json.loads(stdout)) if stdout.startswith("[") else stdout
    except json.JSONDecodeError:
        data = stdout
    return data, files


def outputs(key: tuple[str, str], r: Path) -> tuple[list, Path | None]:
    """Where (command, mode) writes: an --out path (a file for prune and calibrate, a directory otherwise)."""
    command = key[0]
    if command in ("models list", "methods"):
        return [], None
    name = {"prune": "rows.jsonl", "calibrate": "c.safetensors"}.get(command, "out")
    return ["--out"], Path(name)


CASES = [(key, option) for key, (_, changes) in base_and_changes(Path("/x")).items() for option in changes]


def test_every_option_of_every_walked_command_has_a_change_or_a_reason():
    walked = {key[0] for key, _ in CASES}
    assert set(commands()) == walked | set(COMMANDS_NOT_WALKED), set(commands()) ^ (walked | set(COMMANDS_NOT_WALKED))
    table = base_and_changes(Path("/x"))
    for (command, mode), (_, changes) in table.items():
        params = {p.name for p in commands()[command].params} - set(NOT_WALKED)
        takes = MODES.get(command, {}).get(mode)
        want = params if takes is None else params & takes
        assert set(changes) == want, ((command, mode), sorted(want ^ set(changes)))
    for command, modes in MODES.items():  # every mode of the table is walked
        assert {(command, m) for m in modes} <= set(table), command


@pytest.mark.parametrize("key, option", CASES, ids=[f"{k[0]}{':' + k[1] if k[1] else ''}:{o}" for k, o in CASES])
def test_an_accepted_option_changes_what_is_written(inputs, tmp_path, capsys, key, option):
    base, changes = base_and_changes(inputs)[key]
    both, changed = changes[option]
    runs = (base, changed) if both == "instead" else ([*base, *both], [*base, *both, *changed])
    flag, name = outputs(key, inputs)
    if key == ("eval-refusal", "pipe"):
        _pipe_inputs(inputs, capsys)
    results = []
    for i, args in enumerate(runs):
        where = tmp_path / f"run{i}"
        where.mkdir()
        out = where / name if name else where
        args = [*args, *flag, out] if flag else list(args)
        code, stdout, err = run(args, capsys)
        assert code in (0, 1), (args, err)
        if code == 1:  # refused in one line: not silent (the base only where the option lifts a refusal)
            assert err.strip().splitlines()[-1].startswith("aapp: error:") and "Traceback" not in err, err
            assert i == 1 or option in LIFTS_A_REFUSAL, (args, err)
            if i == 1:
                return
        results.append((code, snapshot(where, stdout) if code == 0 else None))
    if (key[0], option) in SAME_OUTPUT_BY_DESIGN:
        assert results[0] == results[1], f"{key} {option}: {SAME_OUTPUT_BY_DESIGN[key[0], option]}, yet the output changed"
        return
    assert results[0] != results[1], f"{key} accepted {runs[1]} and wrote the same as {runs[0]}"


def _pipe_inputs(r: Path, capsys) -> None:
    """Rows to judge, a dense reference, one from another model and one generated with 3 new tokens."""
    if (r / "rows.jsonl").exists():
        return
    common = ["--input", r / "p.jsonl", "--max-new-tokens", 2, "--opt", "dense_layers=1"]
    for out, args in (("rows.jsonl", ["--model", r / "model", "--method", "pp", "--calib", r / "calib.safetensors"]),
                      ("dense.jsonl", ["--model", r / "model", "--method", "dense"]),
                      ("other.jsonl", ["--model", r / "other", "--method", "dense"])):
        a = [*args, *common] if "pp" in args else [*args, *common[:4]]
        code, _, err = run(["prune", *a, "--out", r / out], capsys)
        assert code == 0, err
    code, _, err = run(["prune", "--model", r / "model", "--method", "dense", *common[:2], "--max-new-tokens", 3,
                        "--out", r / "dense3.jsonl"], capsys)
    assert code == 0, err


def _refused_cases():
    """(command, mode, option) for each option a mode does not take: given, it must be refused."""
    table = base_and_changes(Path("/x"))
    out = []
    for (command, mode), _ in table.items():
        takes = MODES.get(command, {}).get(mode)
        if takes is None:
            continue
        for param in commands()[command].params:
            if param.name in takes or param.name in NOT_WALKED:
                continue
            out.append(((command, mode), param.name))
    return out


REFUSED = _refused_cases()


@pytest.mark.parametrize("key, option", REFUSED, ids=[f"{k[0]}:{k[1]}:{o}" for k, o in REFUSED])
def test_an_option_a_mode_does_not_take_is_refused(inputs, tmp_path, capsys, key, option):
    table = base_and_changes(inputs)
    base = table[key][0]
    # The option's change as another mode of the command makes it.
    both, changed = next(changes[option] for (command, _), (_, changes) in table.items()
                         if command == key[0] and option in changes)
    args = [*base, *changed] if both != "instead" else [*base, *changed[len(key[0].split()):]]
    flag, name = outputs(key, inputs)
    code, out, err = run([*args, *flag, tmp_path / name] if flag else args, capsys)
    assert code == 1 and out == "", (args, err)
    assert err.strip().splitlines()[-1].startswith("aapp: error:") and "does not apply" in err, err
