"""`dense_tokens` (with `prefill=dense`): the prefill and the first N generated tokens run unpruned,
then the selection made from the prefill takes over, reading its kept heads from a KV cache that
holds every head."""

import math

import pytest

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import AappError
from aapp.generation import encode
from aapp.methods import Dense
from aapp.methods.pp import ProbePruning
from aapp.prompts import Prompt
from aapp.pruning import flops
from aapp.pruning.engine import PruneOptions
from aapp.pruning.export import check_export
from aapp.methods.build import build_method
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import FAMILIES, PROMPTS, make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
PROMPT = "tell me a story about a cat"
NEW = 6


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    loaded = make_loaded(request.param)
    return loaded, calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")


def rows(loaded, calib, method, options, texts, new=NEW):
    prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(texts)]
    return list(generate_rows(loaded, prompts, method, options, calib, GenerationSettings(max_new_tokens=new)))


def test_every_token_unpruned_is_the_dense_model(setup):
    loaded, calib = setup
    dense = rows(loaded, calib, Dense(), PruneOptions(), PROMPTS)
    held = rows(loaded, calib, ProbePruning(), PruneOptions(ratio=0.4, dense_layers=1, prefill="dense", dense_tokens=NEW), PROMPTS)
    assert [r["completion"] for r in held] == [r["completion"] for r in dense]
    assert all(h["flops"]["pruned"] == d["flops"]["pruned"] for h, d in zip(held, dense))


@pytest.mark.parametrize("k", [1, 3])
def test_the_first_k_tokens_are_the_dense_models_and_the_rest_cost_the_pruned_price(setup, k):
    loaded, calib = setup
    options = PruneOptions(ratio=0.4, dense_layers=1, prefill="dense", dense_tokens=k)
    # The first k tokens: what the dense model says (a generation of k tokens runs dense throughout).
    assert rows(loaded, calib, ProbePruning(), options, PROMPTS, new=k)[0]["completion"] == \
        rows(loaded, calib, Dense(), PruneOptions(), PROMPTS, new=k)[0]["completion"]
    row = rows(loaded, calib, ProbePruning(), options, [PROMPT])[0]
    assert row["new_tokens"] == NEW  # the cost below assumes every decode step ran
    g = loaded.geometry
    ids, _ = encode(loaded.tokenizer, [PROMPT], loaded.device)
    seq = ids.shape[1]
    # Calls: the prefill (call 0), then decode step n (1..NEW-1) over one token with seq + n keys.
    calls = [(seq, (seq + 1) / 2)] + [(1, seq + n) for n in range(1, NEW)]
    saved = 0.0
    for i in range(1, g.num_layers):  # layer 0 is dense
        kept = {name: row["kept"][name][i] for name in ("heads", "kv_heads", "channels")}
        for c, (tokens, context) in enumerate(calls):
            if c >= k:
                saved += flops.dense_block_flops(g, tokens, context) - flops.block_flops(
                    g, tokens, context, kept["heads"], kept["kv_heads"], kept["channels"])
    assert math.isclose(row["flops"]["pruned"], row["flops"]["dense"] - saved, rel_tol=1e-12)
    assert row["flops"]["probe"] == 0  # the selection comes from the prefill's own activations


def test_options_that_clash_with_dense_tokens_are_errors(tmp_path):
    with pytest.raises(AappError, match="ema_momentum"):
        PruneOptions(ratio=0.3, prefill="dense", dense_tokens=2, ema_momentum=0.99)
    with pytest.raises(AappError, match="dense_tokens must be at least 0"):
        PruneOptions(ratio=0.3, prefill="dense", dense_tokens=-1)
    with pytest.raises(AappError, match="give prefill=dense"):
        PruneOptions(ratio=0.3, dense_tokens=2)
    method, options = build_method("flap", {"prefill": "dense", "dense_tokens": "4"}, 0.3)
    with pytest.raises(AappError, match="option prefill does not apply to export: .* static checkpoint"):
        check_export(method, tmp_path / "out", options)
    with pytest.raises(AappError, match="takes no ratio|dense_tokens"):
        build_method("dense", {"dense_tokens": "4"})
