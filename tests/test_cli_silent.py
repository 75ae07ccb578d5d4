"""What used to exit 0 while doing something other than asked, or say something other than what ran."""

from __future__ import annotations

from tests.inprocess import run
from tests.test_cli_modes import one_line


def test_prune_out_in_a_missing_directory_is_an_error(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "no" / "such" / "x.jsonl"
    one_line(*run(["prune", "--model", tiny_model_dir, "--method", "dense", "--input", "calib-harmless", "--out", out],
                  capsys), f"--out {out}: no directory {out.parent}; create it first")
    assert list(tmp_path.iterdir()) == []
