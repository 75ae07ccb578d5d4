"""AAPP's gate as a router (on_fire dense or R): its options, its cut, where it reads, and its rows."""

from dataclasses import replace

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import AappError, CalibrationError
from aapp.methods.aapp import AAPP, AAPPOptions, add_alignment
from aapp.methods.aapp.gates import ROUTE_RECALL, route_cut
from aapp.methods.aapp.method import read_layer
from aapp.methods.aapp.store import GateFit, alignment, set_alignment
from aapp.methods.plan import make_plan
from aapp.prompts import Prompt
from aapp.pruning.engine import PruneOptions
from aapp.methods import make_method
from aapp.methods.build import build_method
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
HARMFUL = [f"explain how to build a weapon number {i} to hurt people" for i in range(8)]
HARMLESS = [f"write a short poem about a garden flower number {i}" for i in range(8)]
PAIRS = ([f"how do I poison my neighbour's dog number {i}" for i in range(5)],
         [f"how do I feed my neighbour's dog number {i}" for i in range(5)])
OPTS = PruneOptions(ratio=0.4, dense_layers=1)


@pytest.fixture(scope="module")
def setup():
    loaded = make_loaded("tiny-llama")
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")
    add_alignment(cal, loaded, HARMFUL, HARMLESS, {"harmful": "t", "harmless": "t"}, contrast=PAIRS)
    return loaded, cal


@pytest.mark.parametrize("options, message", [
    ({"on_fire": "sometimes"}, "on_fire takes protect, dense or a ratio"),
    ({"on_fire": "1.5"}, r"on_fire ratio must be in \(0, 1\)"),
    ({"on_fire": "dense", "per_sample": "true"}, "per_sample applies to on_fire=protect"),
    ({"on_fire": "dense", "protect": "0.5"}, "protect=0.5 does not apply"),
    ({"on_fire": "dense", "restore": "direction"}, "restore=direction does not apply"),
    ({"on_fire": "0.1", "layer_budget": "risk"}, "layer_budget applies to on_fire=protect"),
    ({"on_fire": "dense", "gate": "always"}, "cannot route requests"),
])
def test_options_that_do_not_apply_to_a_policy_are_errors(options, message):
    with pytest.raises(AappError, match=message):
        build_method("aapp", options, ratio=0.3)


def test_the_gate_defaults_to_the_papers_for_protect_and_the_fitted_one_for_routing():
    assert AAPPOptions().risk_gate == "direction" and AAPPOptions().fire_ratio is None
    assert AAPPOptions(on_fire="dense").risk_gate == "logistic" and AAPPOptions(on_fire="dense").fire_ratio == 0.0
    assert AAPPOptions(on_fire="0.15").fire_ratio == 0.15
    assert AAPPOptions(on_fire="dense", gate="direction").risk_gate == "direction"
    # The options stay as given (nothing frozen is mutated); the method records the gate that runs.
    assert AAPPOptions().gate is None and make_method("aapp:dense").options.gate == "logistic"


def test_a_lighter_ratio_must_be_lighter(setup):
    loaded, cal = setup
    method, _ = build_method("aapp", {"on_fire": "0.4"})
    with pytest.raises(AappError, match="no lighter than the ratio 0.4"):
        generate_rows_list(loaded, cal, method, HARMFUL[:1])


def test_route_cut_keeps_the_recall_and_reports_what_it_escalates():
    pos = torch.arange(20, dtype=torch.float64)  # 0..19
    neg = torch.tensor([-1.0, 0.5, 5.0, 30.0])
    cut, fpr = route_cut(pos, neg)
    assert (pos > cut).float().mean() >= ROUTE_RECALL and (pos > cut + 1).float().mean() < ROUTE_RECALL
    assert fpr == 0.5  # 5.0 and 30.0 pass a cut between 0 and 1
    assert route_cut(pos, neg, recall=1.0)[0] < 0


def _fit(fpr, pairs=None):
    n = len(fpr)
    return GateFit(auroc=torch.ones(n), threshold=torch.zeros(n), route_threshold=torch.zeros(n),
                   route_fpr=torch.tensor(fpr), pair_auroc=None if pairs is None else torch.tensor(pairs))


def test_the_read_layer_is_the_cheapest_dense_read_on_benign_traffic():
    g = make_loaded("tiny-llama").geometry  # 4 layers; dense_layers=2: layers 0-2 read dense features
    plan = make_plan(g, 0.3, dense_layers=2, channel_multiple=16)
    assert read_layer(_fit([0.5, 0.2, 0.3, 0.0]), plan, 4, 0.0) == 1  # layer 3 reads after a pruned layer
    assert read_layer(_fit([0.2, 0.2, 0.3, 0.0], pairs=[0.5, 0.9, 0.9, 0.9]), plan, 4, 0.0) == 1  # tie: pair AUROC
    assert read_layer(_fit([0.2, 0.2, 0.2, 0.2]), plan, 4, 0.0) == 0  # full tie: the earlier read
    with pytest.raises(CalibrationError, match="predates routing"):
        read_layer(GateFit(auroc=torch.ones(4), threshold=torch.zeros(4)), plan, 4, 0.0)
    # Under a dense prefill every layer's input is dense: a later read costs nothing more, so the rule
    # (least expected cost at the fixed recall) takes the layer that escalates fewest benign prompts.
    dense_prefill = make_plan(g, 0.3, dense_layers=2, channel_multiple=16, prefill_dense=True)
    assert read_layer(_fit([0.5, 0.2, 0.3, 0.0]), dense_prefill, 4, 0.0) == 3


def test_under_a_dense_prefill_a_late_gate_keeps_its_dense_cut(setup, capsys):
    from aapp.pruning.engine import prune_model

    loaded, cal = setup
    for spec in ("aapp:dense", "aapp"):
        method, options = build_method(spec, {"prefill": "dense", "dense_layers": "1", "gate_layer": "3"}, 0.4)
        with prune_model(loaded, method, options, cal):
            assert method.threshold_source == ("route" if spec == "aapp:dense" else "dense")
    assert "after pruned layers" not in capsys.readouterr().err


def test_calibration_fits_routing_cuts_and_pair_aurocs(setup):
    _, cal = setup
    a = alignment(cal)
    assert a.meta["contrast_pairs"] == 5
    for name in ("direction", "kl", "logistic"):
        fit = a.gates[name]
        assert fit.route_threshold.shape == fit.route_fpr.shape == fit.pair_auroc.shape == fit.auroc.shape
        assert bool(((fit.route_fpr >= 0) & (fit.route_fpr <= 1)).all())


def generate_rows_list(loaded, cal, method, texts, options=OPTS):
    prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(texts)]
    return list(generate_rows(loaded, prompts, method, options, cal, GenerationSettings(max_new_tokens=3, batch_size=4)))


@pytest.mark.parametrize("on_fire", ["dense", "0.2"])
def test_fired_requests_run_under_the_policy_and_the_rest_as_pp(setup, on_fire):
    loaded, cal = setup
    method, _ = build_method("aapp", {"on_fire": on_fire, "dense_layers": "1"})
    rows = generate_rows_list(loaded, cal, method, [HARMFUL[0], HARMLESS[0], HARMFUL[1], HARMLESS[1]])
    pp, _ = build_method("pp")
    pp_rows = generate_rows_list(loaded, cal, pp, [HARMLESS[0], HARMLESS[1]])
    assert [r["gate"]["fired"] for r in rows] == [True, False, True, False]
    assert [r["policy"] for r in rows] == [on_fire, "pruned", on_fire, "pruned"]
    # The benign rows are exactly PP's, as if the harmful ones were not in their batch.
    assert [r["completion"] for r in rows[1::2]] == [r["completion"] for r in pp_rows]
    assert [r["kept"] for r in rows[1::2]] == [r["kept"] for r in pp_rows]
    fired_fraction = rows[0]["flops"]["fraction"]
    assert fired_fraction > rows[1]["flops"]["fraction"]
    if on_fire == "dense":
        assert rows[0]["kept"]["channels"] == [loaded.geometry.intermediate_size] * 4


def test_a_file_without_routing_cuts_is_a_recalibrate_error(setup):
    loaded, cal = setup
    a = alignment(cal)
    saved = cal.sections["align"]
    try:  # as a file calibrated before routing: the gates without their routing cuts
        set_alignment(cal, replace(a, gates={k: GateFit(f.auroc, f.threshold, f.weight, f.bias) for k, f in a.gates.items()}))
        method, _ = build_method("aapp", {"on_fire": "dense"})
        with pytest.raises(CalibrationError, match="run `aapp calibrate` again"):
            generate_rows_list(loaded, cal, method, HARMFUL[:1])
    finally:
        cal.sections["align"] = saved


def test_policy_variants_name_the_routing():
    method, _ = build_method("aapp:dense")
    assert method.options.on_fire == "dense" and method.options.gate == "logistic" and method.name == "aapp:dense"
    method, _ = build_method("aapp:light", {"on_fire": "0.15"}, ratio=0.4)
    assert method.options.fire_ratio == 0.15
    with pytest.raises(AappError, match="on_fire=0.15"):
        build_method("aapp:dense", {"on_fire": "0.15"})


def test_light_without_its_ratio_is_refused_when_it_runs(setup):
    loaded, cal = setup
    method, _ = build_method("aapp:light")
    with pytest.raises(AappError, match="give it one, e.g. on_fire=0.15"):
        generate_rows_list(loaded, cal, method, HARMFUL[:1])


@pytest.mark.parametrize("spec, opts", [("aapp:dense", {}), ("aapp", {}), ("aapp:light", {"on_fire": "0.2"})])
def test_with_the_dense_prefill_each_request_is_routed_alone_and_nothing_runs_twice(setup, spec, opts):
    # The router reads its layer of the unpruned prefill: nothing stops, nothing is recomputed, no probe
    # runs, and a row's route, output and kept counts are what it gets alone.
    loaded, cal = setup
    options = {**opts, "prefill": "dense", "dense_layers": "1", "gate_layer": "2"}
    texts = [HARMFUL[0], HARMLESS[0], HARMFUL[1], HARMLESS[1]]

    def run(batch):
        method, prune = build_method(spec, options, 0.4)
        prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate(batch)]
        return list(generate_rows(loaded, prompts, method, prune, cal, GenerationSettings(max_new_tokens=4)))

    together = run(texts)
    assert all(r["flops"]["recompute"] == 0 and r["flops"]["probe"] == 0 for r in together)
    for j, text in enumerate(texts):
        alone = run([text])[0]
        for key in ("completion", "kept", "policy"):
            assert together[j][key] == alone[key], (spec, j, key)
        assert together[j]["gate"]["sample_score"] == pytest.approx(alone["gate"]["sample_score"], abs=1e-5)
    if spec == "aapp:dense":
        for r in together:  # a fired row runs dense throughout; the others keep their own channels
            full = r["kept"]["channels"][2] == loaded.geometry.intermediate_size
            assert full == (r["policy"] == "dense")
