"""scripts/gate_eval.py on a tiny random model: every gate at every layer, the default layers, JSON and markdown."""

import json

from tests.conftest import load_script
from tests.evaluation.sweep_inputs import make_inputs


def test_gate_eval_smoke(tiny_model_dir, tmp_path):
    inputs = make_inputs(tmp_path, tiny_model_dir)
    out, md = tmp_path / "gates.json", tmp_path / "gates.md"
    rc = load_script("gate_eval").main([
        "--model", str(tiny_model_dir), "--calib", str(inputs.calib), "--harmful", str(inputs.harmful),
        "--benign", str(inputs.benign), "--jailbreaks", "0", "--limit", "6", "--prose-windows", "2",
        "--seq-len", "16", "--text", str(inputs.text), "--batch-size", "4", "--dense-layers", "1", "--json", str(out), "--md", str(md)])
    assert rc == 0
    doc = json.loads(out.read_text())
    layers = 4  # tiny-qwen2
    assert {r["gate"] for r in doc["rows"]} == {"direction", "kl", "logistic"}
    assert len(doc["rows"]) == 3 * layers
    assert doc["sets"]["mirror-harmful"] == doc["sets"]["mirror-benign"] == 6
    for gate, layer in doc["default_layers"].items():
        assert [r["default"] for r in doc["rows"] if r["gate"] == gate].count(True) == 1
        assert 0 <= layer < layers
    for r in doc["rows"]:
        assert 0.0 <= r["auroc_mirrored"] <= 1.0 and 0.0 <= r["fire_benign_batch"] <= 1.0
    assert "| logistic |" in md.read_text() and doc["command"].startswith("python scripts/gate_eval.py")
