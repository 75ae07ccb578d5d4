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
    r = aapp("prune", "--model", tiny_model_dir, "--method", "pp", "--dense-layers", 1, "--calib", bad,
             "--input", workdir / "prompts.jsonl", "--max-new-tokens", 2, "--out", out)
    one_line_error(r, "bad.safetensors", "non-finite")
    assert not out.exists()
