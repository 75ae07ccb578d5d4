"""AAPP's refusal restoration (`restore`, issue #15 lever 1): biases on fired batches only, masks and
matmul FLOPs untouched, the bias adds recorded."""

import pytest
import torch

from aapp.errors import AappError
from aapp.generation import generate_batch
from aapp.methods.aapp import AAPP, AAPPOptions
from aapp.methods.aapp.store import alignment
from aapp.methods.pp import SITES, PPScoring, ProbePruning
from aapp.pruning.engine import PruneOptions, prune_model
from tests.methods.test_aapp import HARMFUL, OPTS, setup  # noqa: F401  (setup: the module's fixture)

RESTORES = ["harmful-mean", "direction"]


def run(loaded, cal, method, prompts=HARMFUL[:3], options=OPTS):
    """Generate one batch; per pruned layer (mask, attn_bias, mlp_bias), and the FLOPs record."""
    with prune_model(loaded, method, options, cal) as h:
        generate_batch(loaded.model, loaded.tokenizer, prompts, max_new_tokens=3)
        return {i: (rt.mask, rt.attn_bias, rt.mlp_bias) for i, rt in h.runtimes.items()}, h.record.flops


def pruned_output(mean: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """W[:, pruned] @ mean[pruned], by gathering the pruned columns (the library zeroes the kept ones)."""
    pruned = torch.ones(weight.shape[1], dtype=torch.bool)
    pruned[kept.cpu()] = False
    return weight[:, pruned].double() @ mean[pruned].double()


def expected(cal, loaded, i, mask, restore, comp):
    """The restored (o_proj, down_proj) biases of layer i for a fired batch, from the formulas."""
    g, parts = loaded.geometry, loaded.adapter.layer_parts(loaded.model, i)
    q_cols = (mask.heads.cpu()[:, None] * g.head_dim + torch.arange(g.head_dim)).flatten()
    out = []
    for site, w, kept in (("attn", parts.o_proj.weight, q_cols), ("mlp", parts.down_proj.weight, mask.channels)):
        harm = pruned_output(alignment(cal).harmful.site(site).mean[i], w, kept)
        if restore == "harmful-mean":
            out.append(harm)
            continue
        base = pruned_output(cal.site(site).mean[i], w, kept) if comp else torch.zeros_like(harm)
        resid = alignment(cal).harmful.resid.mean, alignment(cal).harmless.resid.mean
        nxt = min(i + 1, g.num_layers - 1)
        d = (resid[0][nxt] - resid[1][nxt]).double()
        d = d / d.norm()
        out.append(base + d * (d @ (harm - base)))
    return out


def same_masks(a, b):
    return all(torch.equal(a[i][0].heads, b[i][0].heads) and torch.equal(a[i][0].channels, b[i][0].channels)
               for i in a)


def contexts(loaded, cal, method):
    """The (context, selection) of every `select` call while `method` prunes one batch."""
    calls, inner = [], method.select

    def select(ctx):
        calls.append((ctx, inner(ctx)))
        return calls[-1][1]

    method.select = select
    run(loaded, cal, method)
    return calls


@pytest.mark.parametrize("comp", [False, True], ids=["", "comp"])
@pytest.mark.parametrize("restore", RESTORES)
def test_restore_sets_the_formula_biases_on_fired_batches_and_changes_nothing_else(setup, restore, comp):
    loaded, cal, _ = setup
    pp_opts = PPScoring(compensate=SITES if comp else ())
    # Given the same layer inputs, restoration changes biases only. (Through the engine, later
    # layers see the biased residual, so their probes, and masks, may differ: that is the point.)
    plain = contexts(loaded, cal, AAPP(AAPPOptions(gate="always"), pp_opts))
    method = AAPP(AAPPOptions(gate="always", restore=restore), pp_opts)
    with prune_model(loaded, method, OPTS, cal):
        fired = [(ctx, method.select(ctx)) for ctx, _ in plain]
    assert len(fired) == loaded.geometry.num_layers - OPTS.dense_layers
    for (ctx, sel), (_, ref) in zip(fired, plain, strict=True):
        assert torch.equal(sel.mask.heads, ref.mask.heads) and torch.equal(sel.mask.channels, ref.mask.channels)
        want = expected(cal, loaded, ctx.layer, sel.mask, restore, comp)
        for got, w in zip((sel.attn_bias, sel.mlp_bias), want, strict=True):
            assert got is not None
            torch.testing.assert_close(got.double().cpu(), w, rtol=1e-4, atol=1e-5)
    # Not fired: exactly PP, biases included (none without compensation).
    pp, _ = run(loaded, cal, ProbePruning(pp_opts))
    quiet, _ = run(loaded, cal, AAPP(AAPPOptions(gate="never", restore=restore), pp_opts))
    assert same_masks(quiet, pp)
    for i in pp:
        for got, ref in zip(quiet[i][1:], pp[i][1:], strict=True):
            assert (got is None) == (ref is None) == (not comp)
            if comp:
                assert torch.equal(got, ref)


def test_direction_restores_along_the_refusal_direction_only(setup):
    from aapp.methods.aapp.allocation import refusal_direction

    loaded, cal, _ = setup
    cos = {}
    for restore in RESTORES:
        sel, _ = run(loaded, cal, AAPP(AAPPOptions(gate="always", restore=restore)))
        cos[restore] = [torch.nn.functional.cosine_similarity(b.cpu().float(), refusal_direction(cal, i).float(), dim=0)
                        for i, s in sel.items() for b in s[1:]]
    assert all(abs(float(c)) > 1 - 1e-4 for c in cos["direction"])
    assert all(abs(float(c)) < 0.9 for c in cos["harmful-mean"])  # the mean itself is not along d


def test_mlp_reprobe_during_decode_restores_for_the_channels_it_picks(setup):
    from aapp.methods.scores import flap_compensation

    loaded, cal, _ = setup
    reprobe = PruneOptions(ratio=OPTS.ratio, dense_layers=OPTS.dense_layers, reprobe_every=1)
    first, _ = run(loaded, cal, AAPP(AAPPOptions(gate="always", restore="harmful-mean")),
                   options=PruneOptions(ratio=OPTS.ratio, dense_layers=OPTS.dense_layers))
    last, _ = run(loaded, cal, AAPP(AAPPOptions(gate="always", restore="harmful-mean")), options=reprobe)
    assert any(not torch.equal(first[i][0].channels, last[i][0].channels) for i in last)  # decode re-picked
    for i, (mask, _, mlp) in last.items():
        down = loaded.adapter.layer_parts(loaded.model, i).down_proj.weight
        torch.testing.assert_close(mlp, flap_compensation(alignment(cal).harmful.mlp.mean[i], down, mask.channels))


@pytest.mark.parametrize("restore", RESTORES)
def test_restore_keeps_the_matmul_flops_and_records_its_vector_adds(setup, restore):
    loaded, cal, _ = setup
    tokens = []

    def count(module, args, kwargs):
        tokens.append(kwargs["input_ids"].numel())

    hook = loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        sel, pp = run(loaded, cal, ProbePruning())
        n = len(sel)
        per_run = sum(tokens)
        _, pp_comp = run(loaded, cal, ProbePruning(PPScoring(compensate=SITES)))
        _, fired = run(loaded, cal, AAPP(AAPPOptions(gate="always", restore=restore)))
        _, quiet = run(loaded, cal, AAPP(AAPPOptions(gate="never", restore=restore)))
    finally:
        hook.remove()
    assert sum(tokens) == 4 * per_run  # every run saw the same forwards
    assert fired.dense == pp.dense and fired.pruned == pp.pruned and fired.probe == pp.probe
    assert pp.bias == 0 and quiet.to_dict() == pp.to_dict()  # general text pays nothing
    assert fired.bias == per_run * loaded.geometry.hidden_size * 2 * n > 0
    assert pp_comp.bias == fired.bias  # +comp's bias adds are counted too
    assert fired.fraction == pytest.approx((fired.pruned + fired.probe + fired.bias) / fired.dense)
    assert fired.to_dict()["bias"] == fired.bias


def test_unknown_restore_is_refused():
    with pytest.raises(AappError, match="unknown restore 'loud'; choose one of none, harmful-mean, direction"):
        AAPPOptions(restore="loud")
