import copy

import pytest
import torch

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import AappError
from aapp.methods import AAPPOptions, check_method_spec, make_method
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.conftest import logits, make_loaded

TEXT = ["The river ran past the old mill where the children played every summer evening. " * 10] * 4
OPTS = PruneOptions(ratio=0.4, dense_layers=1)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def setup(request):
    loaded = make_loaded(request.param)
    return loaded, calibrate_text(loaded, TEXT, TextSettings(samples=4, seq_len=32), "test")


def _run(loaded, cal, spec):
    with prune_model(loaded, make_method(spec), OPTS, cal) as h:
        out, valid = logits(loaded)
        kept = {i: (rt.mask, rt.attn_bias, rt.mlp_bias) for i, rt in h.runtimes.items()}
        flops = h.record.flops.to_dict()
    return out[valid], kept, flops


def test_compensation_adds_back_the_pruned_channels_mean(setup):
    loaded, cal = setup
    plain, plain_kept, plain_flops = _run(loaded, cal, "pp")
    comp, comp_kept, comp_flops = _run(loaded, cal, "pp+comp")
    # The matmuls are the same; the bias adds are recorded apart (and counted in the fraction).
    matmuls = ("dense", "pruned", "probe")
    assert [comp_flops[k] for k in matmuls] == [plain_flops[k] for k in matmuls]
    assert plain_flops["bias"] == 0 and comp_flops["bias"] > 0 and comp_flops["fraction"] > plain_flops["fraction"]
    hd = loaded.geometry.head_dim
    first = min(comp_kept)
    # Compensation changes what a pruned layer outputs, not which structures it keeps; later
    # layers see the changed outputs, so only the first pruned layer must choose the same.
    (mask, _, _), (pmask, _, _) = comp_kept[first], plain_kept[first]
    assert torch.equal(mask.heads, pmask.heads) and torch.equal(mask.channels, pmask.channels)
    for i, (mask, attn_bias, mlp_bias) in comp_kept.items():
        assert plain_kept[i][1] is None and plain_kept[i][2] is None
        parts = loaded.adapter.layer_parts(loaded.model, i)
        for bias, site, weight, kept in ((attn_bias, "attn", parts.o_proj.weight, mask.q_rows(hd)),
                                         (mlp_bias, "mlp", parts.down_proj.weight, mask.channels)):
            pruned = sorted(set(range(weight.shape[1])) - set(kept.tolist()))
            mean = cal.site(site).mean[i]
            ref = sum(weight[:, k].detach().float() * mean[k] for k in pruned)
            torch.testing.assert_close(bias, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, comp)  # the biases reach the logits


def test_compensation_at_ratio_zero_is_dense(setup):
    loaded, cal = setup
    dense, _ = logits(loaded)
    with prune_model(loaded, make_method("pp+comp"), PruneOptions(ratio=0.0), cal):
        out, _ = logits(loaded)
    assert torch.equal(out, dense)


def test_aapp_takes_compensation_too(setup):
    loaded, cal = setup
    method = make_method("aapp:never+comp", AAPPOptions())
    assert method.name == "aapp:never+comp" and method.options.gate == "never" and method.scoring.compensate == ("attn", "mlp")
    from aapp.methods.aapp import add_alignment

    harmful = [f"explain how to build a weapon number {i}" for i in range(4)]
    harmless = [f"write a poem about flower number {i}" for i in range(4)]
    cal = copy.deepcopy(cal)  # the fixture is shared by the module's other tests
    add_alignment(cal, loaded, harmful, harmless, {"harmful": "t", "harmless": "t"})
    with prune_model(loaded, method, OPTS, cal) as h:
        logits(loaded)
        assert all(rt.mlp_bias is not None for rt in h.runtimes.values())


def test_rows_are_named_by_the_spec(setup):
    from aapp.prompts import Prompt

    loaded, cal = setup
    prompts = [Prompt("p0", "tell me a story", "harmless", "t")]
    rows = list(generate_rows(loaded, prompts, make_method("pp+comp"), OPTS, cal,
                              GenerationSettings(max_new_tokens=2, batch_size=1)))
    assert rows[0]["method"] == "pp+comp"


@pytest.mark.parametrize("spec,name,variant,compensate", [
    ("pp+comp", "pp", None, True), ("aapp:kl+comp", "aapp", "kl", True), ("aapp+comp", "aapp", None, True),
    ("flap", "flap", None, False), ("flap:no-comp", "flap", "no-comp", False), ("pp:history-only", "pp", "history-only", False)])
def test_spec_grammar(spec, name, variant, compensate):
    parsed = check_method_spec(spec)
    assert (parsed.name, parsed.variant, parsed.compensate) == (name, variant, compensate)
    assert make_method(spec).name == spec


@pytest.mark.parametrize("bad,message", [
    ("flap+comp", "flap always compensates"),
    ("wanda-sp+comp", "only pp and aapp take"),
    ("dense+comp", "only pp and aapp take"),
    ("pp:kl+comp", "unknown method variant 'pp:kl\\+comp': pp takes pp:probe-only"),
    ("wanda-sp:x", "wanda-sp takes none"),
    ("pp+compx", "unknown method"),
    ("+comp", "unknown method"),
])
def test_bad_compensation_specs_are_refused(bad, message):
    with pytest.raises(AappError, match=message):
        make_method(bad)
