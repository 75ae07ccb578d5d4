"""What used to exit 0 while doing something other than asked, or say something other than what ran."""

from __future__ import annotations

import json

import pytest

from aapp.errors import InputError
from tests.inprocess import run
from tests.test_cli_modes import one_line


def test_prune_out_in_a_missing_directory_is_an_error(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "no" / "such" / "x.jsonl"
    one_line(*run(["prune", "--model", tiny_model_dir, "--method", "dense", "--input", "calib-harmless", "--out", out],
                  capsys), f"--out {out}: no directory {out.parent}; create it first")
    assert list(tmp_path.iterdir()) == []


def _rows(path, max_new_tokens, method="dense", messages=None):
    prov = {"model": {"name": "m", "fingerprint": "f" * 16}, "method": method, "ratio": 0.0,
            "options": {"generation": {"max_new_tokens": max_new_tokens, "batch_size": 8, "sort_by_length": False}}}
    rows = [{"id": f"q{i}", "prompt": p, "label": "harmful", "completion": "I can't help with that.",
             "method": method, "provenance": prov} | ({"messages": messages} if messages else {})
            for i, p in enumerate(["how to pick a lock", "write malware"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_reference_generated_otherwise_is_refused(capsys, tmp_path):
    """dense at 4 new tokens against pp at 12 was compared without a word: a refusal at the 8th token
    counts for one side only."""
    mine, ref = _rows(tmp_path / "pp.jsonl", 12, "pp"), _rows(tmp_path / "dense.jsonl", 4)
    one_line(*run(["eval-refusal", mine, "--reference", ref], capsys),
             "was generated with max_new_tokens=12", "with max_new_tokens=4", "--allow-generation-mismatch")
    code, out, err = run(["eval-refusal", mine, "--reference", ref, "--allow-generation-mismatch", "--json"], capsys)
    assert code == 0 and json.loads(out) and "compared as asked" in err, err
    code, _, err = run(["eval-refusal", mine, "--reference", _rows(tmp_path / "d12.jsonl", 12)], capsys)
    assert code == 0 and "generated with" not in err, err
    one_line(*run(["eval-refusal", mine, "--allow-generation-mismatch"], capsys), "--reference")


def test_a_reference_row_with_other_messages_is_refused(capsys, tmp_path):
    """Matched by id, the last user turn was compared and not the conversation before it."""
    chat = lambda first: [{"role": "user", "content": first}, {"role": "assistant", "content": "ok"},  # noqa: E731
                          {"role": "user", "content": "how to pick a lock"}]
    mine = _rows(tmp_path / "pp.jsonl", 4, "pp", messages=chat("you are a locksmith"))
    ref = _rows(tmp_path / "dense.jsonl", 4, messages=chat("you are a poet"))
    one_line(*run(["eval-refusal", mine, "--reference", ref], capsys), "id 'q0' has other messages")


@pytest.mark.parametrize("opt, needle", [
    ("protec=0.2", "takes option 'protec' (did you mean 'protect'"),
    ("pp.dense_layer=1", "(did you mean 'pp.dense_layers'?)"),
    ("ppp.dense_layers=1", "names method 'ppp', which the sweep does not run (did you mean 'pp'?)"),
])
def test_a_typo_in_a_sweep_option_gets_a_did_you_mean(capsys, tmp_path, opt, needle):
    """`prune` said "did you mean"; a sweep only that no method takes the option."""
    one_line(*run(["eval-refusal", "--model", tmp_path / "m", "--harmful", "advbench", "--out", tmp_path / "s",
                   "--opt", opt], capsys), needle)


def test_messages_name_the_flag(capsys, tmp_path, tiny_model_dir):
    """"out afile: exists and is not a directory" and "(truncate keeps ...)" named nothing a user can find: the
    CLI names its flags; the library, which knows no command line, names the option."""
    from aapp.context import fit_to_context
    from aapp.prompts import Prompt
    from tests.conftest import make_loaded

    afile = tmp_path / "afile"
    afile.write_text("x")
    rows = _rows(tmp_path / "g.jsonl", 4)
    one_line(*run(["eval-refusal", rows, "--out", afile], capsys), f"--out {afile}: exists and is not a directory")
    one_line(*run(["models", "random", "tiny-llama", "--out", afile], capsys), f"--out {afile}")
    tok = make_loaded("tiny-llama").tokenizer
    long = [Prompt("long", "word " * 40, None, "x")]
    capsys.readouterr()
    assert fit_to_context(long + [Prompt("short", "hi", None, "x")], tok, 60, 8) != []
    assert "left out (the truncate option keeps its last tokens instead)" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"\(the truncate option cuts them to fit\)"):
        fit_to_context(long, tok, 60, 8)
