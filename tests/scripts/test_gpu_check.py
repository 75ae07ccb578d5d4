"""scripts/gpu_check.sh: its dry run end to end, and the verdicts gpu_report.py draws from step JSON.

The dry run is what keeps the one-call GPU proof from rotting between GPU sessions: CI runs it
here and on the GPU image's versions (`make test-oldest`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_leaves_every_step_and_a_verdict_per_target(tmp_path):
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHON"] = sys.executable
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"kernels-check-bf16.json", "kernels-check-fp16.json", "kernels-bf16.json", "e2e.json",
            "gpu_check.json", "gpu_check.md", "command.txt"} <= names
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6 and all("dry run, not a measurement" in line for line in lines), r.stdout
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry"] and "triton" in summary["versions"] and "--dry" in summary["command"]
    e2e = json.loads((out / "e2e.json").read_text())
    assert {(row["method"], row["batch"]) for row in e2e["rows"]} == {(m, b) for m in ("dense", "pp", "aapp")
                                                                      for b in (1, 2)}
    assert {row["backend"] for row in e2e["rows"] if row["method"] != "dense"} == {"triton"}
    check = json.loads((out / "kernels-check-fp16.json").read_text())
    assert check["check_only"] and all(row["check_rel_err"] <= row["tolerance"] for row in check["results"])


def test_usage_error_without_outdir():
    r = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def _kernel_row(regime, of_ideal, of_copy, x_gather):
    return {"model": "m", "linear": "q", "keep": 0.6, "rows": 1 if regime == "decode" else 2048, "regime": regime,
            "fraction_of_ideal": of_ideal, "fraction_of_copy_bw": of_copy, "speedup_vs_gather_mm": x_gather,
            "target_met": None}


@pytest.mark.parametrize("of_ideal,of_copy,met", [(0.95, 0.9, True), (0.85, 0.9, False), (0.95, 0.8, False)])
def test_decode_verdict_needs_both_ideal_and_bandwidth(of_ideal, of_copy, met):
    report = load_script("gpu_report")
    v = report.kernel_regime({"results": [_kernel_row("decode", of_ideal, of_copy, 2.0)]}, "decode", "decode")
    assert v.met is met


def test_end_to_end_verdict_and_missing_steps(tmp_path):
    report = load_script("gpu_report")
    rows = [{"shape": "s", "method": m, "batch": 8, "prefill_speedup": p, "decode_speedup": d}
            for m, p, d in (("dense", 1.0, 1.0), ("pp", 1.5, 1.45), ("aapp", 1.41, 1.3))]
    assert report.end_to_end({"rows": rows}, "prefill").met is True
    v = report.end_to_end({"rows": rows}, "decode")
    assert v.met is False and "1.30x" in v.detail and "aapp" in v.detail
    (tmp_path / "kernels-check-bf16.json").write_text(json.dumps({"results": [
        {"model": "m", "linear": "q", "check_rel_err": 1e-3, "tolerance": 1e-2}], "machine": {}, "device": "d"}))
    assert report.main([str(tmp_path)]) == 1  # the later steps never finished
    verdicts = json.loads((tmp_path / "gpu_check.json").read_text())["verdicts"]
    assert [v["met"] for v in verdicts] == [True, None, None, None, None, None]
