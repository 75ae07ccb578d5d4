"""scripts/bench_kernels.py end to end on CPU with tiny shapes: it checks, times and writes its JSON.

Run in a fresh process: the script's backend choice depends on TRITON_INTERPRET, which the kernel tests
set in this one. No timing is asserted, only that every number is there and sane.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_kernels.py"
TIMES = ("dense_ms", "gather_mm_ms", "small_dense_ms", "ours_ms")


def _run(args, interpret: bool):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("interpret, dtype, rows", [(False, "bf16", "1,4"), (True, "fp32", "1")])
def test_smoke_writes_checked_json(tmp_path, interpret, dtype, rows):
    out = tmp_path / "bench.json"
    result = _run(["--device", "cpu", "--shapes", "tiny", "--rows", rows, "--keep", "0.5", "--dtype", dtype,
                   "--json", str(out)], interpret)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the table and progress go to stderr
    assert "kept-channel linears" in result.stderr

    report = json.loads(out.read_text())
    assert report["device_type"] == "cpu" and report["dtype"] == dtype
    assert report["backend"] == ("triton" if interpret else "torch")
    assert report["machine"]["torch"] and report["machine"]["triton"]
    assert report["copy_bandwidth_gbps"] > 0
    assert "--shapes tiny" in report["command"] and report["date"]
    linears = {(s["name"], s["op"]) for s in report["shapes"]}
    assert linears == {("q", "out"), ("k/v", "out"), ("o", "in"), ("gate/up", "gated"), ("down", "in")}

    results = report["results"]
    assert len(results) == len(linears) * len(rows.split(","))
    assert {r["rows"] for r in results} == {int(v) for v in rows.split(",")}
    for r in results:
        assert all(r[t] > 0 and math.isfinite(r[t]) for t in TIMES), r
        assert r["keep"] == pytest.approx(r["kept"] / r["of"]) and 0 < r["keep"] <= 0.75
        assert r["ideal_speedup"] == pytest.approx(1 / r["keep"])
        assert r["speedup_vs_dense"] == pytest.approx(r["dense_ms"] / r["ours_ms"])
        assert r["fraction_of_ideal"] == pytest.approx(r["speedup_vs_dense"] * r["keep"])
        assert r["speedup_vs_gather_mm"] == pytest.approx(r["gather_mm_ms"] / r["ours_ms"])
        assert r["ours_gbps"] > 0 and r["fraction_of_copy_bw"] > 0
        assert r["check_rel_err"] < (1e-5 if dtype == "fp32" else 1e-2)
        assert r["target_met"] is None  # targets are judged on CUDA only
        assert r["layout"] == ("K-major" if r["linear"] == "down" else "row-major")
    regimes = {r["rows"]: r["regime"] for r in results}
    assert regimes[1] == "decode"


def _load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--shapes", "nope"], "unknown shape set"),
    (["--keep", "1.5"], "--keep"),
    (["--rows", "0"], "--rows"),
    (["--keep", "half"], "could not convert"),
])
def test_bad_arguments_are_usage_errors(monkeypatch, capsys, args, message):
    bench = _load_script(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--device", "cpu", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
