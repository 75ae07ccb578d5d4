"""Fixtures of the serve tests: a calibration of the tiny model, for `--method aapp`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2 shape with 8 layers, so that ratio 0.3 fits with the 3 dense layers `aapp serve` keeps."""
    from tests.conftest import make_loaded

    d = tmp_path_factory.mktemp("serve-model")
    loaded = make_loaded("tiny-qwen2", layers=8)
    loaded.model.save_pretrained(d, safe_serialization=True)
    loaded.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_calib(serve_model_dir, tmp_path_factory) -> Path:
    """A calibration of the tiny model with alignment statistics (what `--method aapp` needs)."""
    d = tmp_path_factory.mktemp("serve-calib")
    words = "the quick brown fox jumps over the lazy dog while the river runs past the old mill".split()
    (d / "text.txt").write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(60))
                                            for i in range(40)))
    out = d / "calib.safetensors"
    r = subprocess.run([sys.executable, "-m", "aapp.cli", "calibrate", "--model", str(serve_model_dir), "--text",
                        str(d / "text.txt"), "--samples", "4", "--seq-len", "32", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return out
