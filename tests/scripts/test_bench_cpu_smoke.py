"""scripts/bench_cpu.py on a tiny random model: it checks, times every config and writes its JSON."""

import json

import torch

from tests.conftest import load_script


def test_bench_cpu_smoke(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    threads = torch.get_num_threads()
    try:
        rc = load_script("bench_cpu").main(["--tiny", "--repeats", "1", "--warmup", "0", "--batch", "4", "--prompt-len", "16",
                             "--decode-steps", "3", "--calib-windows", "2", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["method"], r["ratio"]) for r in rows] == [("dense", 0.0), ("pp", 0.2), ("pp", 0.4)]
    assert result["shape"] == {"batch": 4, "prompt_len": 16, "decode_steps": 3}
    assert {"torch", "cores", "cpu"} <= set(result["machine"]) and "bench_cpu" in result["command"]
    for r in rows:
        assert r["prefill_s"]["median"] > 0 and r["decode_s"]["median"] > 0
        assert len(r["prefill_s"]["all"]) == 1
    assert rows[0]["prefill_speedup"] == 1.0 and rows[0]["flops_prefill"] == 1.0
    # More pruning, less compute, in both phases (probe included).
    assert 1.0 > rows[1]["flops_decode"] > rows[2]["flops_decode"]
    assert 1.0 > rows[1]["flops_prefill"] > rows[2]["flops_prefill"]
    table = capsys.readouterr().out
    assert table.startswith("| config |") and "| pp 0.4 |" in table
