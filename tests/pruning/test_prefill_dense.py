"""`prefill=dense`: the prefill runs unpruned and is the probe. Each row's heads and channels come from
its own prefill activations (PP's scoring, fused with history), decode runs pruned, FLOPs are exact by
phase, a row's output does not depend on its batch-mates, and a row alone pays no probe."""

import math

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.generation import encode, generate_batch
from aapp.methods import Dense
from aapp.methods.base import select_top
from aapp.methods.build import build_method
from aapp.methods.pp import ProbePruning
from aapp.methods.scores import fuse, per_head, ppsp
from aapp.prompts import Prompt
from aapp.pruning import flops
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import FAMILIES, PROMPTS, make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
PROMPT = "tell me a story about a cat"
NEW = 6
OPTS = PruneOptions(ratio=0.4, dense_layers=1, prefill="dense")


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    loaded = make_loaded(request.param)
    return loaded, calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")


def rows(loaded, calib, method, options, texts, new=NEW, batch_size=8):
    prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(texts)]
    settings = GenerationSettings(max_new_tokens=new, batch_size=batch_size)
    return list(generate_rows(loaded, prompts, method, options, calib, settings))


@pytest.mark.parametrize("k", [0, 2])
def test_flops_are_exact_by_phase_with_no_probe(setup, k):
    loaded, calib = setup
    options = PruneOptions(ratio=0.4, dense_layers=1, prefill="dense", dense_tokens=k)
    row = rows(loaded, calib, ProbePruning(), options, [PROMPT])[0]
    dense = rows(loaded, calib, Dense(), PruneOptions(), [PROMPT])[0]
    assert row["new_tokens"] == NEW  # the cost below assumes every decode step ran
    g = loaded.geometry
    seq = encode(loaded.tokenizer, [PROMPT], loaded.device)[0].shape[1]
    # The prefill runs dense: it costs what the dense model's does, and no probe runs.
    assert row["flops"]["probe"] == 0
    assert row["flops"]["prefill"]["run"] == row["flops"]["prefill"]["dense"] == dense["flops"]["prefill"]["dense"]
    # Decode step n (1..NEW-1) over one token with seq + n keys; from step max(k, 1) on, pruned layers run pruned.
    saved = 0.0
    for i in range(1, g.num_layers):  # layer 0 is dense
        kept = {name: row["kept"][name][i] for name in ("heads", "kv_heads", "channels")}
        for n in range(max(k, 1), NEW):
            saved += flops.dense_block_flops(g, 1, seq + n) - flops.block_flops(
                g, 1, seq + n, kept["heads"], kept["kv_heads"], kept["channels"])
    decode = row["flops"]["decode"]
    assert math.isclose(decode["dense"], dense["flops"]["decode"]["dense"], rel_tol=1e-12)
    assert math.isclose(decode["run"], decode["dense"] - saved, rel_tol=1e-9)
    assert math.isclose(row["flops"]["pruned"], row["flops"]["dense"] - saved, rel_tol=1e-12)
    assert saved > 0 and row["kept"]["channels"][1] < g.intermediate_size


def _prefill_activations(loaded, text):
    """Each layer's mean squared o_proj and down_proj inputs over the prompt's tokens, in a dense forward."""
    acts, handles = {}, []
    for i in range(loaded.geometry.num_layers):
        parts = loaded.adapter.layer_parts(loaded.model, i)
        for site, linear in (("attn", parts.o_proj), ("mlp", parts.down_proj)):
            handles.append(linear.register_forward_pre_hook(
                lambda m, a, i=i, site=site: acts.setdefault(i, {}).__setitem__(site, a[0][0].float().square().mean(0))))
    ids, attn = encode(loaded.tokenizer, [text], loaded.device)
    with torch.inference_mode():
        loaded.model(input_ids=ids, attention_mask=attn, use_cache=False)
    for h in handles:
        h.remove()
    return acts


def test_each_rows_selection_is_pp_scoring_of_its_own_prefill_activations(setup):
    loaded, calib = setup
    g = loaded.geometry
    weights = {i: (p.o_proj.weight, p.down_proj.weight)
               for i in range(g.num_layers) for p in [loaded.adapter.layer_parts(loaded.model, i)]}
    for text in PROMPTS[:2]:
        acts = _prefill_activations(loaded, text)
        with prune_model(loaded, ProbePruning(), OPTS, calib) as h:
            generate_batch(loaded.model, loaded.tokenizer, [text], max_new_tokens=2)
            for i, rt in h.runtimes.items():
                o_proj, down_proj = weights[i]
                hist = {s: calib.site(s).sq_mean[i] for s in ("attn", "mlp")}
                heads = per_head(ppsp(fuse(acts[i]["attn"], hist["attn"]), o_proj), g.head_dim)
                channels = ppsp(fuse(acts[i]["mlp"], hist["mlp"]), down_proj)
                want = select_top(heads, channels, h.plan.budgets[i], g)
                assert torch.equal(rt.mask.heads, want.heads), (text, i)
                assert torch.equal(rt.mask.channels, want.channels), (text, i)


@pytest.mark.parametrize("spec, opts", [("pp", {}), ("flap", {})])
def test_a_rows_output_does_not_depend_on_its_batch_mates(setup, spec, opts):
    loaded, calib = setup

    def run(texts):
        method, options = build_method(spec, {**opts, "prefill": "dense", "dense_layers": "1"}, 0.4)
        return rows(loaded, calib, method, options, texts)

    together = run(PROMPTS)
    for j, text in enumerate(PROMPTS):
        alone = run([text])[0]
        assert together[j]["completion"] == alone["completion"], (spec, j)
        assert together[j]["kept"] == alone["kept"], (spec, j)


def test_a_request_alone_pays_no_probe(setup):
    loaded, calib = setup
    probe_schedule = rows(loaded, calib, ProbePruning(), PruneOptions(ratio=0.4, dense_layers=1), [PROMPT])[0]
    prefill_dense = rows(loaded, calib, ProbePruning(), OPTS, [PROMPT])[0]
    assert probe_schedule["flops"]["probe"] > 0 and prefill_dense["flops"]["probe"] == 0
    assert prefill_dense["flops"]["decode"]["fraction"] < 1


def test_options_that_do_not_fit_the_dense_prefill_are_errors():
    from aapp.errors import AappError

    for bad, match in (({"dense_tokens": 2}, "give prefill=dense"), ({"prefill": "both"}, "prefill takes"),
                       ({"prefill": "dense", "ema_momentum": 0.99}, "ema_momentum"),
                       ({"prefill": "dense", "reprobe_every": 2}, "reprobe_every")):
        with pytest.raises(AappError, match=match):
            PruneOptions(ratio=0.3, **bad)


def test_decode_bytes_are_the_kept_weights_and_the_kv_cache_read_per_token(setup):
    loaded, calib = setup
    row = rows(loaded, calib, ProbePruning(), OPTS, [PROMPT])[0]
    dense = rows(loaded, calib, Dense(), PruneOptions(), [PROMPT])[0]
    g, size = loaded.geometry, loaded.model.dtype.itemsize
    seq = encode(loaded.tokenizer, [PROMPT], loaded.device)[0].shape[1]
    kept = [(row["kept"]["heads"][i], row["kept"]["kv_heads"][i], row["kept"]["channels"][i]) for i in range(g.num_layers)]
    weights = sum(flops.block_weight_bytes(g, *k, size) for k in kept) + flops.lm_head_bytes(g, size)
    window = lambda i, n: n if g.sliding_window[i] is None else min(n, g.sliding_window[i])  # noqa: E731
    kv = sum(flops.kv_read_bytes(g, kept[i][1], 1, window(i, seq + n), size)
             for n in range(1, NEW) for i in range(g.num_layers)) / (NEW - 1)
    assert row["decode_bytes"]["batch_size"] == 1
    assert math.isclose(row["decode_bytes"]["weights"], weights, rel_tol=1e-12)
    assert math.isclose(row["decode_bytes"]["kv"], kv, rel_tol=1e-12)
    assert row["decode_bytes"]["weights"] < dense["decode_bytes"]["weights"]
