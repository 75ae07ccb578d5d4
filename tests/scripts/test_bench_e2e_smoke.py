"""scripts/bench_e2e.py on CPU with tiny shapes: it runs every method and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_e2e_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_e2e.py"), "--shapes", "tiny-llama,tiny-gemma3",
           "--batch", "2", "--prompt", "16", "--new", "3", "--repeats", "1", "--dense-layers", "1",
           "--device", "cpu", "--json", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["method"]) for r in rows] == [
        (s, m) for s in ("tiny-llama", "tiny-gemma3") for m in ("dense", "pp", "aapp")]
    for r in rows:
        assert r["prefill_s"] > 0 and r["decode_s"] > 0
        if r["method"] == "dense":
            assert r["prefill_speedup"] == 1.0 and r["flops_fraction_last_decode_step"] == 1.0
        else:
            assert r["flops_fraction_last_decode_step"] < 1.0
