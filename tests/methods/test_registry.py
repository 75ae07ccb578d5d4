"""The method registry: every name and variant builds, bad specs are refused, extensions register
the same way the built-ins do, and the ablation variants do what their names say."""

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import AappError
from aapp.methods import Dense, Method, ProbePruning, make_method, register, registered
from aapp.methods import registry as registry_module
from aapp.methods.registry import Registration
from aapp.pruning.engine import PruneOptions, prune_model
from tests.conftest import logits, make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
OPTS = PruneOptions(ratio=0.4, dense_layers=1)


@pytest.fixture(scope="module")
def setup():
    loaded = make_loaded("tiny-llama")
    return loaded, calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")


def every_spec() -> list[str]:
    specs = []
    for name, reg in registered().items():
        specs += [name] + [f"{name}:{v}" for v in reg.variants or {}]
        if reg.compensable:
            specs.append(name + "+comp")
    return specs


def test_every_registered_name_and_variant_builds_and_names_its_rows():
    specs = every_spec()
    assert {"dense", "pp", "wanda-sp", "flap", "aapp", "aapp:kl", "pp:history-only", "hybrid:pp-heads"} <= set(specs)
    for spec in specs:
        method = make_method(spec)
        assert isinstance(method, Method) and method.name == spec


def test_an_extension_registers_like_a_builtin(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    class Mine(Dense):
        pass

    register(Registration("mine", lambda spec, _: Mine(), "a test method"))
    assert isinstance(make_method("mine"), Mine)
    with pytest.raises(ValueError, match="registered twice"):
        register(Registration("mine", lambda spec, _: Mine(), "again"))
    with pytest.raises(AappError, match="mine takes none"):
        make_method("mine:x")


def _selections(loaded, cal, spec, prompts=("hello there", "tell me a story about a cat")):
    with prune_model(loaded, make_method(spec), OPTS, cal) as h:
        logits(loaded, list(prompts))
        return {i: (rt.mask, rt.attn_bias, rt.mlp_bias) for i, rt in h.runtimes.items()}, h.record.flops.probe


def test_history_only_runs_no_probe_and_ignores_the_batch(setup):
    loaded, cal = setup
    assert not make_method("pp:history-only").uses_probe and make_method("pp").uses_probe
    a, probe_flops = _selections(loaded, cal, "pp:history-only", ["hello there"])
    b, _ = _selections(loaded, cal, "pp:history-only", ["a much longer prompt with more words in it", "x"])
    assert probe_flops == 0
    for i in a:
        assert torch.equal(a[i][0].heads, b[i][0].heads) and torch.equal(a[i][0].channels, b[i][0].channels)


def test_probe_only_scores_ignore_history_and_fused_scores_read_it(setup):
    from aapp.methods.base import LayerContext, ProbeStats

    loaded, cal = setup
    g = loaded.geometry
    gen = torch.Generator().manual_seed(1)
    probe = ProbeStats(attn=torch.rand(g.num_heads * g.head_dim, generator=gen),
                       mlp=torch.rand(g.intermediate_size, generator=gen), tokens=4, context=4)

    def scores(spec, history_scale):
        method = make_method(spec)
        method.bind(loaded.model, loaded.adapter, g, None, cal)
        history = {"attn": probe.attn.flip(0) * history_scale, "mlp": probe.mlp.flip(0) * history_scale}
        ctx = LayerContext(layer=1, parts=loaded.adapter.layer_parts(loaded.model, 1), geometry=g, budget=None,
                           probe=probe, history=history, residual=torch.zeros(1, 1, g.hidden_size),
                           token_mask=torch.ones(1, 1, dtype=torch.bool))
        return method.channel_scores(ctx)

    for a, b in zip(scores("pp:probe-only", 1.0), scores("pp:probe-only", 10.0)):
        assert torch.equal(a, b)
    assert not torch.equal(scores("pp", 1.0)[1], scores("pp", 10.0)[1])
    summed, l2 = scores("pp:probe-only", 1.0)[0], scores("pp:head-l2", 1.0)[0]
    assert summed.shape == l2.shape == (g.num_heads,) and not torch.allclose(summed, l2)


def test_compensation_variants_add_the_biases_they_name(setup):
    loaded, cal = setup
    for spec, attn, mlp in (("flap", True, True), ("flap:no-comp", False, False), ("pp:fluct-heads", True, False),
                            ("pp:fluct-heads+comp", True, True), ("pp", False, False)):
        sel, _ = _selections(loaded, cal, spec)
        assert all((a is not None) == attn and (m is not None) == mlp for _, a, m in sel.values()), spec
    flap, _ = _selections(loaded, cal, "flap")
    plain, _ = _selections(loaded, cal, "flap:no-comp")
    first = min(flap)  # later layers see the compensated outputs; the first pruned layer chooses alike
    assert torch.equal(flap[first][0].channels, plain[first][0].channels)


def test_hybrid_takes_heads_from_one_method_and_channels_from_the_other(setup):
    loaded, cal = setup
    first = 1  # dense_layers=1: the first pruned layer sees the same input under every method
    hybrid, _ = _selections(loaded, cal, "hybrid:pp-heads")
    pp, _ = _selections(loaded, cal, "pp")
    flap, _ = _selections(loaded, cal, "flap")
    (mask, attn_bias, mlp_bias), (pp_mask, _, _), (flap_mask, _, flap_bias) = hybrid[first], pp[first], flap[first]
    assert torch.equal(mask.heads, pp_mask.heads) and torch.equal(mask.channels, flap_mask.channels)
    assert attn_bias is None and torch.equal(mlp_bias, flap_bias)
    other, _ = _selections(loaded, cal, "hybrid:flap-heads")
    assert torch.equal(other[first][0].heads, flap_mask.heads) and torch.equal(other[first][0].channels, pp_mask.channels)


def test_the_dense_reference_reports_no_pruning():
    assert make_method("dense").prunes is False and ProbePruning().prunes is True
