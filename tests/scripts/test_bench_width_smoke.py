"""scripts/bench_width.py end to end on a tiny shape: CLI children, peak RSS, per-layer times, report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_width_smoke(tmp_path):
    out, md = tmp_path / "w.json", tmp_path / "w.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_width.py"), "--shapes", "tiny-llama:3", "--batch", "2",
           "--prompt", "40", "--new", "3", "--repeats", "1", "--warmup", "0", "--calib-samples", "2", "--calib-seq-len", "16",
           "--calib-prompts", "4", "--work", str(tmp_path / "work"), "--json", str(out), "--md", str(md)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    r = json.loads(out.read_text())["results"][0]
    assert set(r["memory"]) == {"plain", "dense", "pp", "aapp"}
    assert all(v["peak_rss_gib"] > 0.1 for v in r["memory"].values())  # the child's own peak, not zero
    for m in ("dense", "pp", "aapp"):  # every prompt is exactly --prompt tokens and decodes --new tokens
        assert r["memory"][m]["prompt_tokens"] == [40] and r["memory"][m]["new_tokens"] == [3]
    assert r["memory"]["pp"]["flops_fraction"] < 1.0
    # The cut model's 2 pruned layers are pruned as the 4-layer release's single pruned layer would be.
    assert r["speed"]["pp"]["layer_ratio"] == pytest.approx(r["release_layer_ratio"]) == 0.95
    assert r["speed"]["pp"]["prefill_ideal"] > 1 and r["speed"]["dense"]["prefill_speedup"] == 1.0
    assert r["calibration"]["3"]["bytes"] > r["calibration"]["1"]["bytes"]
    assert r["calibration_extrapolated"]["release_layers"] == 4
    assert "| tiny-llama | pp |" in md.read_text()
