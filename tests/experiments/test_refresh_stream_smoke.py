"""experiments/refresh_stream.py: a labelled stream of one-set batches, the gate's fires per refresh value."""

import json

import pytest

from aapp.errors import InputError
from tests.conftest import load_script
from tests.evaluation.sweep_inputs import BENIGN, HARMFUL, make_inputs


def labelled(path, texts, label):
    path.write_text("".join(json.dumps({"id": f"{label[0]}{i}", "prompt": t, "label": label}) + "\n"
                            for i, t in enumerate(texts)))
    return path


def test_stream_takes_turns_by_batch_and_drops_partial_batches(tmp_path):
    script = load_script("refresh_stream", "experiments")
    h = labelled(tmp_path / "h.jsonl", HARMFUL[:5], "harmful")
    b = labelled(tmp_path / "b.jsonl", BENIGN[:8], "benign")
    batches = script.build_stream(f"{b},{h}", batch_size=2, seed=0)
    assert [x[0].label for x in batches] == ["benign", "harmful", "benign", "harmful", "benign", "benign"]
    assert all(len(x) == 2 and len({p.label for p in x}) == 1 for x in batches)
    (tmp_path / "u.jsonl").write_text(json.dumps({"prompt": "no label"}) + "\n")
    with pytest.raises(InputError, match="no harmful/benign label"):
        script.build_stream(str(tmp_path / "u.jsonl"), batch_size=1, seed=0)


@pytest.mark.parametrize("gate, fires", [("always", True), ("never", False)])
def test_refresh_stream_counts_fires_per_batch_kind(tiny_model_dir, tmp_path, gate, fires):
    inputs = make_inputs(tmp_path, tiny_model_dir)
    h = labelled(tmp_path / "h.jsonl", HARMFUL, "harmful")
    b = labelled(tmp_path / "b.jsonl", BENIGN[:4], "benign")
    out = tmp_path / "r.json"
    script = load_script("refresh_stream", "experiments")
    rc = script.main(["--model", str(tiny_model_dir), "--calib", str(inputs.calib), "--stream", f"{h},{b}",
                      "--refresh", "0,1", "--gate", gate, "--dense-layers", "1", "--batch-size", "4",
                      "--json", str(out), "--md", str(tmp_path / "r.md")])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["labels"] == ["harmful", "benign", "harmful"]
    for r in doc["results"]:
        assert r["fired"] == [fires] * 3
        assert r["all"] == {"harmful": {"fired": 2 * fires, "of": 2}, "benign": {"fired": int(fires), "of": 1}}
        assert r["second_half"]["harmful"]["of"] + r["first_half"]["harmful"]["of"] == 2
    assert "| refresh |" in (tmp_path / "r.md").read_text()
