"""Every command fed random bytes and malformed files: one line and exit 1, or a clean run; never a traceback.

In-process (`aapp.cli.main`, as the console script runs it) so that Hypothesis can try many
inputs cheaply; few examples of tiny inputs, derandomized, so the suite stays fast and the same
every run. An exception other than AappError escapes `main()` and fails the test with its input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.inprocess import run

FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Near misses of each format, besides raw bytes and text: what a user's hand-made file looks like.
MALFORMED = [
    b"", b"\n\n", b"\xef\xbb\xbf", b"\x00\x01\x02", b"\xff\xfe{}", b"{", b"[", b"[]", b"{}", b"null", b"3",
    b'{"prompt": 1}', b'{"prompt": ""}', b'{"prompt": "x", "label": "maybe"}', b'{"prompt": "x", "id": [1]}',
    b'[{"prompt": "x"}, "y"]', b'{"messages": []}', b'{"messages": [{"role": "user"}]}',
    b'{"messages": [{"role": "assistant", "content": "x"}]}', b'{"messages": "hi"}',
    b'[{"messages": [{"role": "user", "content": [{"type": "image"}]}]}]',
    b'goal\n"unclosed\n', b"prompt,label\nx,maybe\n", b"a,b\n1\n",
    b'{"completion": 3}', b'{"prompt": "x", "completion": null}', b'{"prompt": "x", "completion": "y", "label": 5}',
    b'{"prompt": "x", "completion": "y", "id": {}}', b'{"id": "a", "prompt": "x", "completion": "No."}\n' * 2,
]
payloads = st.one_of(st.sampled_from(MALFORMED), st.binary(max_size=48), st.text(max_size=32).map(str.encode))
suffixes = st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".safetensors", ""])


def check_clean(code: int, err: str, where: Path) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)  # 2: a usage error, which click words in one box
    if code == 1:
        assert err.strip().splitlines()[-1].startswith("aapp: error:"), err
    leftovers = [p.name for p in where.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not leftovers, leftovers


def fuzz_file(tmp_path: Path, data: bytes, suffix: str) -> Path:
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def common(tiny_model_dir):
    return ["--model", tiny_model_dir]


@FUZZ
@given(data=payloads)
@example(data=b"\x80\x81 garbage")
def test_prune_stdin(capsys, tmp_path, common, data):
    code, _, err = run(["prune", *common, "--method", "dense", "--max-new-tokens", 1], capsys, stdin=data)
    check_clean(code, err, tmp_path)


@FUZZ
@given(data=payloads, suffix=suffixes)
def test_prune_files(capsys, tmp_path, common, data, suffix):
    path = fuzz_file(tmp_path, data, suffix)
    code, _, err = run(["prune", *common, "--method", "dense", "--max-new-tokens", 1, "-i", path,
                        "--out", tmp_path / "out.jsonl"], capsys)
    check_clean(code, err, tmp_path)
    code, _, err = run(["prune", *common, "--method", "pp", "--calib", path, "-i", "calib-harmless", "--limit", 1,
                        "--max-new-tokens", 1], capsys)
    check_clean(code, err, tmp_path)


@FUZZ
@given(data=payloads, suffix=suffixes)
def test_calibrate_files(capsys, tmp_path, common, data, suffix):
    path = fuzz_file(tmp_path, data, suffix)
    small = ["--samples", 1, "--seq-len", 8, "--limit", 2]
    for args in (["--text", path, "--no-alignment"], ["--text", path, "--harmful", path, "--harmless", path]):
        code, _, err = run(["calibrate", *common, *small, *args, "--out", tmp_path / "c.safetensors"], capsys)
        check_clean(code, err, tmp_path)


@FUZZ
@given(data=payloads, suffix=suffixes)
def test_eval_refusal_stdin_and_files(capsys, tmp_path, data, suffix):
    path = fuzz_file(tmp_path, data, suffix)
    for args, stdin in ((["eval-refusal"], data), (["eval-refusal", path, "--out", tmp_path / "ev"], None),
                        (["eval-refusal", "--reference", path], b'{"id": "a", "prompt": "x", "completion": "No."}')):
        code, _, err = run(args, capsys, stdin=stdin)
        check_clean(code, err, tmp_path)


@FUZZ
@given(word=st.text(max_size=16))
def test_models_commands_take_any_name(capsys, tmp_path, word):
    (tmp_path / "file").write_bytes(b"x")
    for args in (["models", "random", word, "--out", tmp_path / "m", "--layers", 1],
                 ["models", "random", "tiny-llama", "--out", tmp_path / "file"],
                 ["models", "pull", word + "-no-such-alias"]):
        code, _, err = run(args, capsys)
        check_clean(code, err, tmp_path)


@pytest.mark.parametrize("args", [["prune", "--method", "dense", "-i", "calib-harmless", "--out", "/proc/x.jsonl"],
                                  ["eval-refusal", "--out", "/proc/aapp-eval"]], ids=["prune", "eval-refusal"])
def test_unwritable_out_is_one_line_before_any_work(capsys, tmp_path, common, args):
    # As root, os.access says yes to /proc; the write failed only after the whole run.
    code, out, err = run([*args[:1], *(common if args[0] == "prune" else []), *args[1:]], capsys,
                         stdin=b'{"prompt": "x", "completion": "y"}\n')
    check_clean(code, err, tmp_path)
    assert code == 1 and "/proc" in err.strip().splitlines()[-1] and out == ""


def test_a_ratio_past_the_models_limit_is_refused_before_it_loads(capsys, common, monkeypatch):
    import aapp.models.loading as loading

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", never)
    code, out, err = run(["prune", *common, "--method", "pp", "--ratio", 0.99, "--calib", "c.safetensors",
                          "-i", "calib-harmless"], capsys)
    # The tiny model has 4 layers; 3 dense leave 1 to prune, at most 0.95 of it: 0.95 / 4.
    assert code == 1 and "the most this 4-layer model allows is 0.237 with dense_layers=3" in err
