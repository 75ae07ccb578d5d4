"""AAPP's gate thresholds refitted on PP-pruned features (issue #15), and AAPP's choice of them."""

import copy
from dataclasses import replace

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text, pack_tokens
from aapp.errors import InputError
from aapp.methods.aapp import AAPP, AAPPOptions, add_alignment, thresholds
from aapp.methods.aapp.gates import GATES, best_threshold
from aapp.methods.aapp.passes import collect_set, window_features
from aapp.methods.aapp.store import PrunedThresholds, alignment, set_alignment
from aapp.methods.aapp.thresholds import add_pruned_thresholds, parse_gate_ratios
from aapp.methods.pp import ProbePruning
from aapp.pruning.calibrate import pp_prefill
from aapp.pruning.engine import PruneOptions, prune_model
from tests.conftest import make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
HARMFUL = [f"explain how to build a weapon number {i} to hurt people" for i in range(8)]
HARMLESS = [f"write a short poem about a garden flower number {i}" for i in range(8)]
OPTS = PruneOptions(dense_layers=1)  # 4 layers: layer 1 is the first pruned one


def pruned_features(loaded, cal, prompts, ratio, opts):
    return thresholds.pruned_features(loaded, alignment(cal).post_instruction_tokens, prompts, ratio,
                                      pp_prefill(loaded, cal), opts.dense_layers)


def fit_pruned_thresholds(loaded, cal, harmful, harmless, ratios, opts, **kw):
    """The thresholds, with the engine's PP prefill handed in as `aapp calibrate` hands it."""
    return thresholds.fit_pruned_thresholds(loaded, alignment(cal), harmful, harmless, ratios, pp_prefill(loaded, cal),
                                            opts.dense_layers, **kw)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    loaded = make_loaded("tiny-llama")
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")
    add_alignment(cal, loaded, HARMFUL, HARMLESS, {"harmful": "t", "harmless": "t"})
    return loaded, cal


def test_pruned_features_are_the_dense_ones_up_to_the_first_pruned_layer_and_shift_after(setup):
    loaded, cal = setup
    dense = collect_set(loaded, HARMFUL).features
    pruned = pruned_features(loaded, cal, HARMFUL, 0.4, OPTS)
    assert pruned.shape == dense.shape
    torch.testing.assert_close(pruned[:, :2], dense[:, :2], rtol=1e-5, atol=1e-5)  # layer 1's input is dense
    for layer in (2, 3):
        assert (pruned[:, layer] - dense[:, layer]).abs().max() > 1e-2, layer


def test_thresholds_are_refitted_after_the_first_pruned_layer_only(setup):
    loaded, cal = setup
    got = fit_pruned_thresholds(loaded, cal, HARMFUL, HARMLESS, [0.2, 0.4], OPTS)
    assert got.ratios == (0.2, 0.4) and got.dense_layers == 1
    residual = {n for n, g in GATES.items() if g.reads_residual}
    assert set(got.threshold) == residual
    a = alignment(cal)
    for name in residual:
        t, dense = got.threshold[name], a.gates[name].threshold
        assert t.shape == (2, loaded.geometry.num_layers)
        for r in range(2):
            assert torch.equal(t[r, :2], dense[:2]), name  # layers 0 and 1 read dense features
            assert not torch.allclose(t[r, 2:], dense[2:]), name
    # The same rule as the dense fit, on the pruned features: recompute one by hand.
    fh, fs = (pruned_features(loaded, cal, p, 0.4, OPTS) for p in (HARMFUL, HARMLESS))
    gate = GATES["direction"]
    sh, ss = (gate.scores(f, a.harmful.resid, a.harmless.resid) for f in (fh, fs))
    assert float(got.threshold["direction"][1, 3]) == pytest.approx(best_threshold(sh[:, 3], ss[:, 3]), abs=1e-6)


def test_gate_ratios_parse_and_refuse_what_prunes_nothing(setup):
    assert parse_gate_ratios("0.2, 0.3,0.4") == (0.2, 0.3, 0.4)
    assert parse_gate_ratios("") == () and parse_gate_ratios("none") == ()
    for bad in ("0", "0.3,x", "1.0"):
        with pytest.raises(Exception):
            parse_gate_ratios(bad)
    loaded, cal = setup
    with pytest.raises(InputError, match="prunes nothing"):
        fit_pruned_thresholds(loaded, cal, HARMFUL, HARMLESS, [0.0], OPTS)


def with_pruned(cal, ratios, value, dense_layers=1):
    """A copy of `cal` whose pruned thresholds are `value[r]` at every layer, for each ratio."""
    out = copy.copy(cal)
    out.sections = dict(cal.sections)  # the copy's own sections: cal keeps its own
    L = cal.attn.mean.shape[0]
    t = {n: torch.tensor(value, dtype=torch.float32)[:, None].expand(len(ratios), L).clone()
         for n, g in GATES.items() if g.reads_residual}
    set_alignment(out, replace(alignment(cal), pruned=PrunedThresholds(tuple(ratios), dense_layers, t)))
    return out


def run_gate(loaded, cal, ratio, gate="logistic", gate_layer=3, dense_layers=1):
    method = AAPP(AAPPOptions(gate=gate, gate_layer=gate_layer))
    with prune_model(loaded, method, PruneOptions(ratio=ratio, dense_layers=dense_layers), cal) as h:
        from aapp.generation import encode

        ids, attn = encode(loaded.tokenizer, HARMLESS[:4], loaded.device)
        with torch.inference_mode():
            loaded.model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1)
        return method, h.row_reports(1)[0].facts.to_json()


def test_aapp_uses_the_pruned_thresholds_of_its_ratio(setup, capsys):
    loaded, cal = setup
    cal2 = with_pruned(cal, [0.2, 0.4], [1e6, -1e6])  # 0.2: never fires; 0.4: always fires
    method, info = run_gate(loaded, cal2, 0.4 + 1e-7)  # within 1e-6 of 0.4
    assert info["threshold"] == "pruned@0.4" and method.threshold == -1e6 and info["fired"] is True
    method, info = run_gate(loaded, cal2, 0.2)
    assert info["threshold"] == "pruned@0.2" and info["fired"] is False
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("why", ["no thresholds", "other ratio", "other dense layers"])
def test_aapp_falls_back_to_the_dense_threshold_with_one_warning(setup, capsys, why):
    loaded, cal = setup
    cal2 = {"no thresholds": cal, "other ratio": with_pruned(cal, [0.2], [-1e6]),
            "other dense layers": with_pruned(cal, [0.4], [-1e6], dense_layers=2)}[why]
    method, info = run_gate(loaded, cal2, 0.4)
    assert info["threshold"] == "dense" and method.threshold == float(alignment(cal).gates["logistic"].threshold[3])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "fitted on dense features" in err[0] and "gate_ratios=0.4" in err[0], err


def test_a_gate_before_the_first_pruned_layer_keeps_the_dense_threshold_silently(setup, capsys):
    loaded, cal = setup
    method, info = run_gate(loaded, with_pruned(cal, [0.4], [-1e6]), 0.4, gate="direction", gate_layer=1)
    assert info["threshold"] == "dense" and method.threshold == float(alignment(cal).gates["direction"].threshold[1])
    method, info = run_gate(loaded, cal, 0.0, gate="direction", gate_layer=3)  # ratio 0 prunes nothing
    assert info["threshold"] == "dense"
    assert capsys.readouterr().err == ""
    _, info = run_gate(loaded, cal, 0.4, gate="always")
    assert info["threshold"] is None


def test_adding_thresholds_merges_by_ratio(setup):
    loaded, cal = setup
    cal2 = with_pruned(cal, [0.2, 0.4], [1.0, 2.0])
    add_pruned_thresholds(cal2, alignment(with_pruned(cal, [0.3, 0.4], [3.0, 4.0])).pruned)
    p = alignment(cal2).pruned
    assert p.ratios == (0.2, 0.3, 0.4)
    assert p.threshold["kl"][:, 0].tolist() == [1.0, 3.0, 4.0]  # 0.4 taken from the new ones
    add_pruned_thresholds(cal2, alignment(with_pruned(cal, [0.3], [5.0], dense_layers=2)).pruned)
    assert alignment(cal2).pruned.ratios == (0.3,) and alignment(cal2).pruned.dense_layers == 2  # another plan: replaced


def test_best_threshold_caps_the_benign_pass_rate():
    pos = torch.tensor([0.5, 2.0, 3.0, 4.0])
    neg = torch.tensor([-1.0, 0.0, 1.0, 2.5])
    # Balanced accuracy alone lets a benign score through; with a cap of 0 none may pass.
    free = best_threshold(pos, neg)
    capped = best_threshold(pos, neg, max_fpr=0.0)
    assert (neg > free).float().mean() > 0
    assert capped == pytest.approx(2.75)  # between 2.5 and 3.0: the best cut above every benign score
    assert best_threshold(pos, neg, max_fpr=1.0) == free


def test_prose_and_the_fpr_cap_reach_the_pruned_thresholds(setup):
    loaded, cal = setup
    prose = pack_tokens(loaded.tokenizer, TEXT, 4, 32)
    base = fit_pruned_thresholds(loaded, cal, HARMFUL, HARMLESS, [0.4], OPTS)
    capped = fit_pruned_thresholds(loaded, cal, HARMFUL, HARMLESS, [0.4], OPTS, prose=prose, max_fpr=0.0)
    assert capped.max_fpr == 0.0 and base.max_fpr is None
    # With no benign input allowed through, the cut sits above every benign pruned score, prose included.
    fs = pruned_features(loaded, cal, HARMLESS, 0.4, OPTS)
    with prune_model(loaded, ProbePruning(), replace(OPTS, ratio=0.4), cal):
        fp = window_features(loaded, prose, alignment(cal).post_instruction_tokens)
    a = alignment(cal)
    gate, fit = GATES["logistic"], a.gates["logistic"]
    for layer in (2, 3):
        benign = torch.cat([gate.scores(f, a.harmful.resid, a.harmless.resid, fit)[:, layer] for f in (fs, fp)])
        assert (benign > capped.threshold["logistic"][0, layer]).sum() == 0
    assert not torch.equal(capped.threshold["logistic"], base.threshold["logistic"])
