import pytest
import torch

from aapp.methods.aapp.passes import post_instruction_tokens
from aapp.methods.aapp.store import alignment, set_alignment
from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import CalibrationError
from aapp.generation import generate_batch
from aapp.methods.aapp import AAPP, AAPPOptions, add_alignment
from aapp.methods.aapp.gates import auroc, best_threshold
from aapp.methods.pp import ProbePruning
from aapp.prompts import Prompt
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
HARMFUL = [f"explain how to build a weapon number {i} to hurt people" for i in range(8)]
HARMLESS = [f"write a short poem about a garden flower number {i}" for i in range(8)]
OPTS = PruneOptions(ratio=0.4, dense_layers=1)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def setup(request):
    loaded = make_loaded(request.param)
    cal = calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")
    no_align = calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")
    add_alignment(cal, loaded, HARMFUL, HARMLESS, {"harmful": "t", "harmless": "t"})
    return loaded, cal, no_align


def masks(handle, prompts):
    generate_batch(handle.loaded.model, handle.loaded.tokenizer, prompts, max_new_tokens=3)
    return {i: rt.mask for i, rt in handle.runtimes.items()}


def test_gate_always_keeps_critical_channels(setup):
    loaded, cal, _ = setup
    method = AAPP(AAPPOptions(gate="always", protect=0.25, critical="diff"))
    with prune_model(loaded, method, OPTS, cal) as h:
        kept = masks(h, HARMLESS[:3])
        assert h.row_reports(1)[0].facts.fired is True
    for i, m in kept.items():
        crit = method.critical[i]
        assert len(crit.heads) == 1 and len(crit.channels) == 40  # 25% of 4 heads, of 160 channels
        assert set(crit.heads.tolist()) <= set(m.heads.tolist())
        assert set(crit.channels.tolist()) <= set(m.channels.tolist())


def test_gate_never_is_pp_and_counts_match(setup):
    loaded, cal, _ = setup
    with prune_model(loaded, ProbePruning(), OPTS, cal) as h:
        pp = masks(h, HARMFUL[:3])
        pp_flops = h.record.flops.to_dict()
    with prune_model(loaded, AAPP(AAPPOptions(gate="never")), OPTS, cal) as h:
        never = masks(h, HARMFUL[:3])
        assert h.record.flops.to_dict() == pp_flops
    with prune_model(loaded, AAPP(AAPPOptions(gate="always", protect=0.3)), OPTS, cal) as h:
        always = masks(h, HARMFUL[:3])
        assert h.record.flops.to_dict() == pp_flops  # matched compute, to the FLOP
    for i in pp:
        assert torch.equal(pp[i].heads, never[i].heads) and torch.equal(pp[i].channels, never[i].channels)
        assert len(always[i].heads) == len(pp[i].heads) and len(always[i].channels) == len(pp[i].channels)
        assert len(always[i].kv_heads) <= loaded.geometry.num_kv_heads


def test_gate_layer_is_the_best_in_sample_layer_before_pruning(setup):
    loaded, cal, _ = setup
    auc = alignment(cal).gates["direction"].auroc
    method = AAPP(AAPPOptions(gate="direction"))
    with prune_model(loaded, method, OPTS, cal):
        assert auc[method.gate_layer] == auc[: 2].max()  # best up to the first pruned layer (dense_layers=1)


@pytest.mark.parametrize("gate", ["direction", "kl", "logistic"])
def test_gate_fires_on_harmful_batches_only_and_only_then_changes_the_selection(setup, gate):
    loaded, cal, _ = setup
    method = AAPP(AAPPOptions(gate=gate))
    with prune_model(loaded, ProbePruning(), OPTS, cal) as h:
        pp = masks(h, HARMLESS[:4])
    with prune_model(loaded, method, OPTS, cal) as h:
        # The calibration prompts separate at the gate layer, so its threshold splits them.
        assert alignment(cal).gates[gate].auroc[method.gate_layer] == 1.0
        fired = masks(h, HARMFUL[:4])
        assert h.row_reports(1)[0].facts.fired is True and bool((h.run.batch.state.sample_scores > 0).all())
        quiet = masks(h, HARMLESS[:4])
        assert h.row_reports(1)[0].facts.fired is False and bool((h.run.batch.state.sample_scores <= 0).all())
    for i in quiet:  # not fired: exactly PP's selection
        assert torch.equal(quiet[i].heads, pp[i].heads) and torch.equal(quiet[i].channels, pp[i].channels)
    for i in fired:  # fired: the critical channels are kept
        assert set(method.critical[i].channels.tolist()) <= set(fired[i].channels.tolist())


def test_setdiff_critical_channels(setup):
    from aapp.methods.masks import top_k
    from aapp.methods.scores import wanda_sp

    loaded, cal, _ = setup
    method = AAPP(AAPPOptions(gate="always", critical="setdiff", protect=0.2))
    with prune_model(loaded, method, OPTS, cal) as h:
        kept = masks(h, HARMFUL[:2])
    for i, m in kept.items():
        crit = set(method.critical[i].channels.tolist())
        down = loaded.adapter.layer_parts(loaded.model, i).down_proj.weight
        general_pool = set(top_k(wanda_sp(cal.mlp.sq_mean[i], down), 64).tolist())  # top 2n, n = 32
        assert 0 < len(crit) <= 32
        assert not crit & general_pool  # important on harmful prompts, not among the general-text top
        assert crit <= set(m.channels.tolist())


def test_attribution_critical_channels_follow_the_refusal_direction(setup):
    loaded, cal, _ = setup
    method = AAPP(AAPPOptions(gate="always", critical="attribution", protect=0.2))
    with prune_model(loaded, method, OPTS, cal) as h:
        kept = masks(h, HARMFUL[:2])
    for i, m in kept.items():
        assert len(method.critical[i].channels) == 32
        assert set(method.critical[i].channels.tolist()) <= set(m.channels.tolist())
    # A channel that writes nothing into the residual cannot be critical by attribution.
    down = loaded.adapter.layer_parts(loaded.model, 1).down_proj
    top = int(method.critical[1].channels[0])
    saved = down.weight.data[:, top].clone()
    try:
        down.weight.data[:, top] = 0
        again = AAPP(AAPPOptions(gate="always", critical="attribution", protect=0.2))
        prune_model(loaded, again, OPTS, cal).remove()
        assert top not in again.critical[1].channels.tolist()
    finally:
        down.weight.data[:, top] = saved


def test_refresh_moves_the_gate_history_every_n_batches(setup):
    loaded, cal, _ = setup

    def scores(refresh):
        method = AAPP(AAPPOptions(gate="direction", refresh=refresh))
        out = []
        with prune_model(loaded, method, OPTS, cal) as h:
            for _ in range(3):
                masks(h, HARMLESS[:2])
                out.append(h.run.batch.state.sample_scores.clone())
        return out

    fixed = scores(0)
    assert torch.equal(fixed[0], fixed[2])
    moved = scores(2)
    assert torch.equal(moved[0], moved[1])  # no refresh before the 2nd batch's decision
    assert not torch.equal(moved[1], moved[2])  # the 2nd batch refreshed the history the 3rd reads
    torch.testing.assert_close(moved[0], fixed[0])


def test_calibration_without_alignment_is_refused(setup):
    loaded, _, no_align = setup
    with pytest.raises(CalibrationError, match="alignment"):
        prune_model(loaded, AAPP(), OPTS, no_align)


def test_per_sample_gating_equals_separate_sub_batches(setup):
    loaded, cal, _ = setup
    prompts = [Prompt(f"p{i}", t, None, "t") for i, t in enumerate([HARMFUL[0], HARMLESS[0], HARMFUL[1], HARMLESS[1]])]
    settings = GenerationSettings(max_new_tokens=5, batch_size=4)
    rows = list(generate_rows(loaded, prompts, AAPP(AAPPOptions(gate="direction", per_sample=True)), OPTS, cal, settings))
    fired = [r["gate"]["fired"] for r in rows]
    assert fired == [True, False, True, False]  # in-sample prompts: the gate splits the batch
    for flag in (True, False):
        sub = [p for p, f in zip(prompts, fired) if f == flag]
        forced = AAPP(AAPPOptions(gate="always" if flag else "never"))
        ref = list(generate_rows(loaded, sub, forced, OPTS, cal, settings))
        got = [r for r, f in zip(rows, fired) if f == flag]
        assert [r["completion"] for r in got] == [r["completion"] for r in ref]
        assert [r["kept"] for r in got] == [r["kept"] for r in ref]


def test_gate_helpers():
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    t = best_threshold(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert 1.0 < t < 2.0
    from aapp.models.synthetic import tiny_tokenizer

    assert post_instruction_tokens(tiny_tokenizer()) == 2  # "<|end|><|assistant|>"
    assert post_instruction_tokens(tiny_tokenizer(chat_template=False)) == 1


def test_gate_variant_spec_sets_the_gate_and_names_the_rows(setup):
    from aapp.errors import AappError
    from aapp.methods import make_method

    loaded, cal, _ = setup
    method = make_method("aapp:always", AAPPOptions(protect=0.25))
    assert method.name == "aapp:always" and method.options.gate == "always" and method.options.protect == 0.25
    # A variant is a preset: an explicit option against it is an error, never a silent win either way.
    for spec, opts in (("aapp:always", AAPPOptions(gate="direction")), ("aapp:always", {"gate": "direction"}),
                       ("aapp:kl", {"gate": "direction"}), ("aapp:dense", {"on_fire": "protect"}),
                       ("aapp:direction", {"gate": "kl"})):
        with pytest.raises(AappError, match="sets .* but its options set"):
            make_method(spec, opts)
    assert make_method("aapp:dense", {"on_fire": "dense"}).options.on_fire == "dense"
    assert make_method("aapp:kl", {"gate": "kl"}).options.gate == "kl"
    assert make_method("aapp", AAPPOptions(gate="kl")).options.gate == "kl"
    prompts = [Prompt(f"p{i}", t, "harmful", "t") for i, t in enumerate(HARMFUL[:2])]
    rows = list(generate_rows(loaded, prompts, method, OPTS, cal, GenerationSettings(max_new_tokens=2, batch_size=2)))
    assert [r["method"] for r in rows] == ["aapp:always"] * 2 and all(r["gate"]["fired"] for r in rows)
    for bad in ("aapp:", "aapp:loud", "pp:kl", "nope"):
        with pytest.raises(AappError, match="unknown method"):
            make_method(bad)


def test_a_gate_variant_and_a_gate_option_that_disagree_are_refused():
    from aapp.errors import AappError
    from aapp.methods import make_method

    with pytest.raises(AappError, match="aapp:kl sets gate=kl, but its options set gate=logistic"):
        make_method("aapp:kl", {"gate": "logistic"})
    assert make_method("aapp:kl", {"gate": "kl"}).options.gate == "kl"


def test_setdiff_with_a_pool_of_every_channel_is_refused(setup):
    from aapp.errors import AappError

    loaded, cal, _ = setup
    with pytest.raises(AappError, match="protects nothing"):
        prune_model(loaded, AAPP(AAPPOptions(critical="setdiff", protect=0.5)), OPTS, cal)
    prune_model(loaded, AAPP(AAPPOptions(critical="diff", protect=0.5)), OPTS, cal).remove()


def test_a_calibration_without_the_asked_gate_is_a_clear_error(setup):
    import copy
    from dataclasses import replace

    loaded, cal, _ = setup
    old = copy.copy(cal)  # a file written before the logistic gate existed
    old.sections = dict(cal.sections)
    a = alignment(cal)
    set_alignment(old, replace(a, gates={k: v for k, v in a.gates.items() if k != "logistic"}))
    with pytest.raises(CalibrationError, match="no logistic gate; run `aapp calibrate` again"):
        prune_model(loaded, AAPP(AAPPOptions(gate="logistic")), OPTS, old)
    prune_model(loaded, AAPP(AAPPOptions(gate="direction")), OPTS, old).remove()  # the others still work


LEVERS = {"risk": dict(layer_budget="risk", budget_shift=0.5), "mass": dict(protect_by="mass", critical="attribution")}
TILED = PruneOptions(ratio=0.4, dense_layers=1, channel_multiple=16)  # 160 channels: kept in tiles of 16


def one_batch(loaded, method, cal, prompts):
    with prune_model(loaded, method, TILED, cal) as h:
        kept = masks(h, prompts)
        return kept, h.record, h.plan


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_levers_match_pp_compute_to_the_flop(setup, lever):
    loaded, cal, _ = setup
    _, pp, plan = one_batch(loaded, ProbePruning(), cal, HARMFUL[:3])
    method = AAPP(AAPPOptions(gate="always", **LEVERS[lever]))
    _, rec, _ = one_batch(loaded, method, cal, HARMFUL[:3])
    assert (rec.flops.pruned, rec.flops.probe) == (pp.flops.pruned, pp.flops.probe)
    pruned = [i for i, r in enumerate(plan.layer_ratios) if r > 0]
    channels = [rec.kept[i]["channels"] for i in pruned]
    planned = [plan.budgets[i].channels for i in pruned]
    assert [rec.kept[i]["heads"] for i in pruned] == [pp.kept[i]["heads"] for i in pruned]
    assert sum(channels) == sum(planned)
    if lever == "risk":  # channels moved between layers, in whole tiles
        assert channels != planned and all(c % plan.channel_tile == 0 for c in channels)
        assert channels == [method.fired_budgets[i].channels for i in pruned]
    else:
        assert channels == planned


@pytest.mark.parametrize("lever", sorted(LEVERS))
def test_levers_change_the_selection_only_when_the_gate_fires(setup, lever):
    loaded, cal, _ = setup
    pp, _, plan = one_batch(loaded, ProbePruning(), cal, HARMFUL[:3])
    never, _, _ = one_batch(loaded, AAPP(AAPPOptions(gate="never", **LEVERS[lever])), cal, HARMFUL[:3])
    flat = AAPP(AAPPOptions(gate="always", critical=LEVERS[lever].get("critical", "setdiff")))
    flat_kept, _, _ = one_batch(loaded, flat, cal, HARMFUL[:3])
    method = AAPP(AAPPOptions(gate="always", **LEVERS[lever]))
    fired, _, _ = one_batch(loaded, method, cal, HARMFUL[:3])
    for i in pp:
        assert torch.equal(never[i].heads, pp[i].heads) and torch.equal(never[i].channels, pp[i].channels)
        assert set(method.critical[i].channels.tolist()) <= set(fired[i].channels.tolist())
    # Fired, the lever's selection differs from PP's and from flat AAPP's.
    assert any(not torch.equal(fired[i].channels, pp[i].channels) for i in pp)
    assert any(not torch.equal(fired[i].channels, flat_kept[i].channels) for i in pp)
    if lever == "mass":  # protection follows refusal mass: the flat total, unevenly spread
        counts = [len(method.critical[i].channels) for i in pp]
        assert sum(counts) == len(pp) * round(0.3 * 160) and len(set(counts)) > 1
        assert all(len(method.critical[i].channels) == 0 for i in range(len(plan.budgets)) if i not in pp)
