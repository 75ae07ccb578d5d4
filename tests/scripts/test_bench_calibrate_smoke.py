"""scripts/bench_calibrate.py on a tiny random model: it checks, times forward, passes and fit, and writes its JSON."""

import json

from tests.conftest import load_script


def test_bench_calibrate_smoke(tmp_path, capsys):
    out = tmp_path / "calib.json"
    rc = load_script("bench_calibrate").main(["--tiny", "--limit", "4", "--repeats", "1", "--warmup", "0",
                                              "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"forward", "passes", "fit"}
    assert all(s["median"] > 0 and len(s["all"]) == 1 for s in result["seconds"].values())
    assert result["shape"]["prompts"] == {"calib-harmful": 4, "calib-harmless": 4, "contrast-harmful": 4,
                                          "contrast-benign": 4}
    assert result["passes_over_forward"] > 0 and result["fit_over_passes"] > 0
    assert {"torch", "cores", "cpu"} <= set(result["machine"]) and "transformers" in result["versions"]
    assert len(result["load_average"]["before"]) == 3 and "bench_calibrate" in result["command"]
    assert capsys.readouterr().out.startswith("| phase |")


def test_bench_calibrate_checks_before_it_times(monkeypatch):
    """A pass that changed the model's output must stop the benchmark before any timing."""
    import pytest

    bench = load_script("bench_calibrate")
    real = bench.collect_set

    def meddling(loaded, prompts, batch_size=8, on_batch=None):
        handle = loaded.model.register_forward_hook(lambda m, a, out: out.logits.mul_(1.001))
        try:
            return real(loaded, prompts, batch_size, on_batch)
        finally:
            handle.remove()

    monkeypatch.setattr(bench, "collect_set", meddling)
    with pytest.raises(SystemExit, match="change the model's logits"):
        bench.main(["--tiny", "--limit", "4", "--repeats", "1", "--warmup", "0"])
