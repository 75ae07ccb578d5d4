"""The pruned attention against two oracles: a softmax written out by hand, and the model's own
attention modules (at full keep the pruned forward must compute exactly what they compute)."""

import math

import pytest
import torch

from aapp.methods.base import Method, Selection
from aapp.models.kv_cache import cache_kwarg, new_cache
from aapp.pruning.attention import attend, causal_mask
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.forward import PrunedAttention
from aapp.methods.masks import LayerMask
from aapp.generation import encode, positions
from tests.conftest import FAMILIES, make_loaded


def reference(q, k, v, allowed, scaling):
    """Grouped attention spelled out: each query head reads kv head h // (hq / hkv)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~allowed, -math.inf)
    return scores.softmax(-1) @ v


def qkv(B=2, hq=4, hkv=2, Sq=5, Skv=5, D=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, hq, Sq, D, generator=g), torch.randn(B, hkv, Skv, D, generator=g),
            torch.randn(B, hkv, Skv, D, generator=g))


@pytest.mark.parametrize("q_len,kv_len,window", [(5, 5, None), (1, 9, None), (3, 9, None), (6, 6, 3), (1, 9, 4)],
                         ids=["prefill", "decode", "chunk-after-cache", "prefill-window", "decode-window"])
def test_no_mask_means_causal_with_window(q_len, kv_len, window):
    q, k, v = qkv(Sq=q_len, Skv=kv_len)
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
    for i in range(q_len):
        pos = kv_len - q_len + i
        for j in range(kv_len):
            allowed[i, j] = j <= pos and (window is None or pos - j < window)
    assert torch.equal(causal_mask(q_len, kv_len, window, "cpu"), allowed)
    out = attend(q, k, v, None, scaling=0.3, window=window)
    torch.testing.assert_close(out, reference(q, k, v, allowed, 0.3))


@pytest.mark.parametrize("kind", ["bool-4d", "float-4d", "padding-2d"])
def test_passed_masks_are_honoured(kind):
    q, k, v = qkv(Sq=4, Skv=6)
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # row 0 left-padded
    allowed = causal_mask(4, 6, None, "cpu")[None, None] & pad[:, None, None, :]  # [B, 1, Sq, Skv]
    mask = {"bool-4d": allowed,
            "float-4d": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min),
            "padding-2d": pad.long()}[kind]
    out = attend(q, k, v, mask, scaling=0.25, window=None)
    torch.testing.assert_close(out, reference(q, k, v, allowed, 0.25))


class KeepAll(Method):
    name = "keep-all"
    needs_calibration = False

    def select(self, ctx):
        return Selection(LayerMask.full(ctx.geometry))


def attention_outputs(loaded, prompts, steps):
    """Each layer's attention output at prefill and at every decode step: {(step, layer): [B, S, D]}."""
    model, layers = loaded.model, loaded.adapter.layers(loaded.model)
    seen, handles = {}, []
    step = [0]
    for i, layer in enumerate(layers):
        def hook(module, args, output, i=i):
            seen[(step[0], i)] = output[0].detach().clone()
        handles.append(layer.self_attn.register_forward_hook(hook))
    ids, attn = encode(loaded.tokenizer, prompts, loaded.device)
    pos = positions(attn)
    cache = {cache_kwarg(model): new_cache(model)}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **cache).logits
        for step[0] in range(1, steps + 1):
            nxt = logits[:, -1:].argmax(-1)
            attn = torch.cat([attn, torch.ones_like(nxt)], 1)
            pos = pos[:, -1:] + 1
            logits = model(input_ids=nxt, attention_mask=attn, position_ids=pos, use_cache=True, **cache).logits
    for h in handles:
        h.remove()
    valid = encode(loaded.tokenizer, prompts, loaded.device)[1].bool()
    return seen, valid


BATCHES = {
    "batch-1": ["a prompt long enough to pass the sliding window"],
    "padded-3": ["x", "a much longer prompt with more words in it", "tell me a story"],
}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("family", FAMILIES)
def test_full_keep_equals_the_models_own_attention(family, batch, impl):
    """Prefill and 6 decode steps past Gemma's window of 8, left padding, mixed lengths, both HF masks."""
    loaded = make_loaded(family, attn_implementation=impl)
    prompts = BATCHES[batch]
    ref, valid = attention_outputs(loaded, prompts, steps=6)
    with prune_model(loaded, KeepAll(), PruneOptions(ratio=0.5, dense_layers=1)) as h:
        swapped = [i for i, layer in enumerate(loaded.adapter.layers(loaded.model))
                   if isinstance(layer.self_attn, PrunedAttention)]
        assert swapped == sorted(h.runtimes) and len(swapped) == loaded.geometry.num_layers - 1
        out, _ = attention_outputs(loaded, prompts, steps=6)
    if family == "tiny-gemma3":
        assert any(w is not None for w in loaded.geometry.sliding_window)
    assert ref.keys() == out.keys()
    for (step, layer), expected in ref.items():
        got = out[(step, layer)]
        rows = valid if step == 0 else torch.ones(got.shape[:2], dtype=torch.bool)  # decode: every row is real
        torch.testing.assert_close(got[rows], expected[rows], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"step {step}, layer {layer}: {m}")
