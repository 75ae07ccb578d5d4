"""scripts/ppl_sweep.py on a tiny random model: every method and ablation runs, rows and checks land in JSON."""

import json

import pytest

from tests.conftest import load_script

SCRIPT = load_script("ppl_sweep")
TINY = ["--tiny", "--calib-windows", "2", "--eval-windows", "2", "--seq-len", "32", "--batch-size", "2",
        "--dense-layers", "1", "--channel-multiple", "8"]
# The ablations under the registry's own names: a row is named by the spec that made it.
ABLATIONS = ["pp:probe-only", "pp:history-only", "pp:head-l2", "hybrid:pp-heads", "hybrid:flap-heads",
             "pp:fluct-heads", "flap:no-comp"]


def run(tmp_path, methods, *extra) -> dict:
    out = tmp_path / "ppl.json"
    assert SCRIPT.main([*TINY, "--methods", ",".join(methods), "--ratios", "0.2,0.3",
                        "--calib", str(tmp_path / "cal.safetensors"), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_ppl_sweep_smoke(tmp_path, capsys):
    methods = ["pp", "pp+comp", "wanda-sp", "flap", *ABLATIONS]
    doc = run(tmp_path, methods)
    assert [(r["method"], r["ratio"]) for r in doc["rows"]] == (
        [("dense", 0.0)] + [(m, r) for m in methods for r in (0.2, 0.3)])
    by = {(r["method"], r["ratio"]): r for r in doc["rows"]}
    assert set(doc["checks"]) == {"pp_monotonic", "pp_beats_wanda-sp_at_0.3", "pp_beats_flap_at_0.3"}
    # Static cells cost the same FLOPs, compensation adds its bias adds.
    assert by[("pp:history-only", 0.3)]["flops_fraction"] == pytest.approx(by[("flap:no-comp", 0.3)]["flops_fraction"])
    assert by[("flap", 0.3)]["flops_fraction"] > by[("flap:no-comp", 0.3)]["flops_fraction"]
    assert by[("pp+comp", 0.3)]["flops_fraction"] > by[("pp", 0.3)]["flops_fraction"]
    # Compensation and its absence are different models.
    assert by[("flap:no-comp", 0.3)]["ppl"] != by[("flap", 0.3)]["ppl"]
    assert by[("pp+comp", 0.3)]["ppl"] != by[("pp", 0.3)]["ppl"]
    assert "| flap:no-comp (FLOPs) |" in capsys.readouterr().out
    assert doc["options"]["full_probe"] is False

    # The full-batch probe costs more than pp's small probe.
    full = run(tmp_path, ["pp"], "--full-probe")
    assert full["options"]["full_probe"] is True
    assert full["rows"][-1]["flops_fraction"] > by[("pp", 0.3)]["flops_fraction"]


def test_ablations_go_by_the_registry_names_only():
    from aapp.errors import AappError
    from aapp.methods import make_method

    for spec in ABLATIONS:
        assert make_method(spec).name == spec
    with pytest.raises(AappError, match="unknown method"):
        make_method("pp-history-only")
