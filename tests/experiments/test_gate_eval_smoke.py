"""experiments/gate_eval.py on a tiny random model: every gate at every layer, the default layers, JSON and markdown."""

import json

from tests.conftest import load_script
from tests.evaluation.sweep_inputs import make_inputs


def test_gate_eval_smoke(tiny_model_dir, tmp_path):
    inputs = make_inputs(tmp_path, tiny_model_dir)
    out, md = tmp_path / "gates.json", tmp_path / "gates.md"
    rc = load_script("gate_eval", "experiments").main([
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
    assert "| logistic |" in md.read_text() and doc["command"].startswith("python experiments/gate_eval.py")


def test_gate_eval_pruned_reads_pruned_features_and_falls_back_to_dense_cuts(tiny_model_dir, tmp_path):
    inputs = make_inputs(tmp_path, tiny_model_dir)
    common = ["--model", str(tiny_model_dir), "--calib", str(inputs.calib), "--harmful", str(inputs.harmful),
              "--benign", str(inputs.benign), "--jailbreaks", "0", "--limit", "6", "--prose-windows", "2",
              "--seq-len", "16", "--text", str(inputs.text), "--batch-size", "4", "--dense-layers", "1",
              "--ratio", "0.5"]
    docs = {}
    for mode in ("dense", "pruned"):
        out = tmp_path / f"{mode}.json"
        rc = load_script("gate_eval", "experiments").main(common + ["--json", str(out)] + (["--pruned"] if mode == "pruned" else []))
        assert rc == 0
        docs[mode] = json.loads(out.read_text())
    # The file has no pruned thresholds: the dense cuts serve, and the result says so.
    assert docs["pruned"]["thresholds"] == "dense" and docs["pruned"]["pruned_at"] == 0.5
    assert docs["dense"]["pruned_at"] is None

    def by(doc, layer):
        return {r["gate"]: r for r in doc["rows"] if r["layer"] == layer}
    # Layers 0-1 read dense inputs either way; the last layer's input comes after pruned layers.
    assert by(docs["dense"], 1)["direction"]["auroc_mirrored"] == by(docs["pruned"], 1)["direction"]["auroc_mirrored"]
    last = {k: (v["fire_prose_window"], v["auroc_sets"], v["fire_benign_prompt"]) for k, v in by(docs["dense"], 3).items()}
    assert last != {k: (v["fire_prose_window"], v["auroc_sets"], v["fire_benign_prompt"])
                    for k, v in by(docs["pruned"], 3).items()}
