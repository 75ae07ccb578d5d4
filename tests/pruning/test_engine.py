import copy

import pytest
import torch

from aapp.generation import encode, generate_batch, positions
from aapp.methods import Dense
from aapp.methods.base import Method, Selection
from aapp.methods.pp import PPScoring, ProbePruning
from aapp.pruning.engine import PruneOptions, choose_probe, prune_model
from aapp.methods.masks import LayerMask
from tests.conftest import PROMPTS, logits


class Fixed(Method):
    """Keeps given heads/channels in every pruned layer (or everything)."""

    name = "fixed"
    needs_calibration = False

    def __init__(self, heads=None, channels=None):
        self.heads, self.channels = heads, channels

    def select(self, ctx):
        g = ctx.geometry
        if self.heads is None:
            return Selection(LayerMask.full(g))
        return Selection(LayerMask.from_kept(torch.tensor(self.heads), torch.tensor(self.channels), g))


class ProbeOnly(ProbePruning):
    needs_calibration = False

    def __init__(self):
        super().__init__(PPScoring(scores_from="probe"))


def test_full_mask_path_equals_dense(tiny):
    """The pruned attention/MLP code with nothing pruned must compute the dense model."""
    ref, valid = logits(tiny)
    dense_gen = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=8).completions
    with prune_model(tiny, Fixed(), PruneOptions(ratio=0.5, dense_layers=1)) as h:
        assert len(h.runtimes) == tiny.geometry.num_layers - 1
        out, _ = logits(tiny)
        gen = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=8).completions
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-5, atol=1e-5)
    assert gen == dense_gen


@pytest.mark.parametrize("heads", [[0, 1, 3], [0, 2, 3]], ids=["pad-last-group", "pad-first-group"])
def test_pruned_forward_equals_masked_weights(tiny, heads):
    """Skipping heads/channels == zeroing their o_proj/down_proj input columns in a dense copy."""
    g = tiny.geometry
    channels = [2, 5, 7, 30, 31, 100]  # heads: uneven GQA groups on purpose
    masked = copy.deepcopy(tiny)
    with torch.no_grad():
        for i in range(1, g.num_layers):
            p = masked.adapter.layer_parts(masked.model, i)
            keep_cols = torch.zeros(g.num_heads * g.head_dim, dtype=torch.bool)
            for h in heads:
                keep_cols[h * g.head_dim:(h + 1) * g.head_dim] = True
            p.o_proj.weight[:, ~keep_cols] = 0
            keep_ch = torch.zeros(g.intermediate_size, dtype=torch.bool)
            keep_ch[channels] = True
            p.down_proj.weight[:, ~keep_ch] = 0
    ref, valid = logits(masked)
    with prune_model(tiny, Fixed(heads, channels), PruneOptions(ratio=0.5, dense_layers=1)):
        out, _ = logits(tiny)
        gen = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=8).completions
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-4, atol=1e-4)
    assert gen == generate_batch(masked.model, masked.tokenizer, PROMPTS, max_new_tokens=8).completions


def test_ratio_zero_reproduces_dense_exactly(tiny):
    ref, valid = logits(tiny)
    dense_gen = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=8).completions
    with prune_model(tiny, ProbeOnly(), PruneOptions(ratio=0.0)) as h:
        out, _ = logits(tiny)
        gen = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=8).completions
        assert h.record.flops.pruned == h.record.flops.dense
    assert torch.equal(out, ref) and gen == dense_gen


def test_remove_restores_modules_and_outputs(tiny):
    ref, _ = logits(tiny)
    layer = tiny.adapter.layer_parts(tiny.model, 2)
    attn, mlp = layer.attn, layer.mlp
    h = prune_model(tiny, ProbeOnly(), PruneOptions(ratio=0.4, dense_layers=1))
    pruned, _ = logits(tiny)
    assert not torch.allclose(pruned, ref)
    h.remove()
    assert layer.layer.self_attn is attn and layer.layer.mlp is mlp
    assert not tiny.model._forward_pre_hooks and not layer.layer._forward_pre_hooks
    assert torch.equal(logits(tiny)[0], ref)


def test_kept_counts_match_plan(tiny):
    with prune_model(tiny, ProbeOnly(), PruneOptions(ratio=0.4, dense_layers=1)) as h:
        generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=3)
        for i, budget in enumerate(h.plan.budgets):
            if i in h.runtimes:
                assert h.record.kept[i]["heads"] == budget.heads
                assert h.record.kept[i]["kv_heads"] == budget.kv_heads
                assert h.record.kept[i]["channels"] == budget.channels
                m = h.runtimes[i].mask
                assert set((m.heads // tiny.geometry.group_size).tolist()) == set(m.kv_heads.tolist())
        f = h.record.flops
        assert f.pruned < f.dense and f.probe > 0


def test_flops_fraction_falls_with_ratio(tiny_llama):
    fractions = []
    for r in (0.0, 0.2, 0.4):
        with prune_model(tiny_llama, ProbeOnly(), PruneOptions(ratio=r, dense_layers=1)) as h:
            generate_batch(tiny_llama.model, tiny_llama.tokenizer, PROMPTS, max_new_tokens=3)
            fractions.append(h.record.flops.pruned / h.record.flops.dense)
    assert fractions[0] == 1.0 and fractions[0] > fractions[1] > fractions[2]


def test_mask_kept_through_decode_and_reprobe_moves_only_mlp(tiny_llama):
    with prune_model(tiny_llama, ProbeOnly(), PruneOptions(ratio=0.5, dense_layers=1, reprobe_every=2)) as h:
        seen = []
        rt = h.runtimes[2]
        orig = rt.set_mask

        def spy(mask, *a, **k):
            seen.append(mask)
            orig(mask, *a, **k)
        rt.set_mask = spy
        generate_batch(tiny_llama.model, tiny_llama.tokenizer, PROMPTS[:2], max_new_tokens=7)
    assert len(seen) == 1 + 3  # prefill, then steps 2, 4, 6
    assert all(torch.equal(m.heads, seen[0].heads) for m in seen)


def test_dense_method_counts_flops_without_pruning(tiny_llama):
    ref, _ = logits(tiny_llama)
    with prune_model(tiny_llama, Dense(), PruneOptions(ratio=0.0)) as h:
        out, _ = logits(tiny_llama)
        assert h.record.flops.dense > 0 and h.record.flops.fraction == 1.0
    assert torch.equal(out, ref)


def test_choose_probe_picks_highest_norm_tokens():
    x = torch.zeros(4, 6, 3)
    x[2, 4] = 10.0   # the loudest token
    x[2, 1] = 5.0
    x[0, 0] = 100.0  # loud but padding: must be ignored
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 0] = False
    samples, pos = choose_probe(x, mask, sample_frac=0.05, position_frac=0.3)  # ceil(6 * 0.3) = 2 positions
    assert samples.tolist() == [2]
    assert pos.tolist() == [1, 4]


def test_ema_updates_only_kept_history(tiny_llama):
    from aapp.calibration.store import Calibration, SiteStats

    g = tiny_llama.geometry
    site = {name: SiteStats(mean=torch.zeros(g.num_layers, c), sq_mean=torch.ones(g.num_layers, c))
            for name, c in (("attn", g.num_heads * g.head_dim), ("mlp", g.intermediate_size))}
    cal = Calibration(meta={"fingerprint": tiny_llama.fingerprint}, **site)
    with prune_model(tiny_llama, ProbePruning(), PruneOptions(ratio=0.5, dense_layers=1, ema_momentum=0.9),
                     calib=cal) as h:
        logits(tiny_llama)
        kept = h.runtimes[2].mask.channels
        hist = h.history["mlp"][2]
        dropped = torch.ones_like(hist, dtype=torch.bool)
        dropped[kept] = False
        assert torch.all(hist[dropped] == 1.0)
        assert not torch.allclose(hist[kept], torch.ones_like(hist[kept]))
    assert torch.all(cal.mlp.sq_mean == 1.0)  # the file's history is never mutated


def test_hf_generate_runs_pruned(tiny):
    """The documented Python API: a wrapped model's own generate() runs pruned, then dense again."""
    tok = tiny.tokenizer
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    dense = tiny.model.generate(**enc, **kwargs)
    with prune_model(tiny, ProbeOnly(), PruneOptions(ratio=0.5, dense_layers=1)) as h:
        pruned = tiny.model.generate(**enc, **kwargs)
        assert h.record.flops.pruned < h.record.flops.dense
        assert h.record.kept[2]["heads"] == h.plan.budgets[2].heads
    assert pruned.shape[0] == 2 and not torch.equal(pruned, dense)
    assert torch.equal(tiny.model.generate(**enc, **kwargs), dense)


def test_forward_without_position_ids(tiny_llama):
    """HF builds a batch-1 RoPE table when no position_ids are given; the probe must cope."""
    ids = tiny_llama.tokenizer(PROMPTS[:1] * 3, return_tensors="pt").input_ids
    with prune_model(tiny_llama, ProbeOnly(), PruneOptions(ratio=0.4, dense_layers=1)) as h:
        with torch.no_grad():
            out = tiny_llama.model(input_ids=ids).logits
        assert out.shape[0] == 3 and h.record.flops.probe > 0
