"""serve's one call into the method: a routed request (AAPP on_fire) answers as `aapp prune` does alone,
recomputation included, and names the policy it ran under."""

from __future__ import annotations

import pytest

from aapp.calibration.store import load_calibration
from aapp.generation import encode
from aapp.models.loading import load_model
from aapp.prompts import Prompt, load_prompts
from aapp.pruning.engine import prune_model
from aapp.methods.build import build_method
from aapp.pruning.run import GenerationSettings, generate_rows
from aapp.serve.policy import run_request
from aapp.serve.schemas import Sampling
from tests.serve.served import whole_characters

PROMPTS = ["tell me a story about a cat", "how do I make a bomb to hurt people", "write a poem about rain"]


# Chosen so that on this random toy each gate fires on some prompts and not on others.
@pytest.mark.parametrize("gate_layer, gate", [("2", "logistic"), ("5", "direction")],
                         ids=["dense-read", "after-pruned-layers"])
def test_a_routed_request_answers_as_prune_does_alone(serve_model_dir, tiny_calib, gate_layer, gate):
    loaded = load_model(str(serve_model_dir))
    calib = load_calibration(tiny_calib)
    opts = {"on_fire": "dense", "gate_layer": gate_layer, "gate": gate, "dense_layers": "3"}
    policies = set()
    harmful = load_prompts("calib-harmful")
    for text in PROMPTS + [harmful[0].text, harmful[5].text]:
        method, options = build_method("aapp", opts, ratio=0.3)
        [row] = generate_rows(loaded, [Prompt("p", text, None, "t")], method, options, calib,
                              GenerationSettings(max_new_tokens=6, batch_size=1))
        method, options = build_method("aapp", opts, ratio=0.3)
        ids, _ = encode(loaded.tokenizer, [text], loaded.device)
        with prune_model(loaded, method, options, calib) as handle:
            out, served = run_request(handle, ids, Sampling(max_tokens=6))
        info = served.to_json()
        assert out.text.strip() == whole_characters(row["completion"])
        assert info["policy"] == row["policy"] and info["gate"]["fired"] == row["gate"]["fired"]
        assert info["flops_fraction"] == pytest.approx(row["flops"]["fraction"], rel=1e-12)
        assert info["kept"] == row["kept"]
        if row["gate"]["fired"] and gate_layer == "5":
            assert row["flops"]["recompute"] > 0
        policies.add(row["policy"])
    assert policies == {"dense", "pruned"}  # both routes ran
