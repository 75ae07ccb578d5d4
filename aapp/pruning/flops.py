"""FLOPs from shapes: what a forward costs dense, pruned, and what the probe and biases add.

One multiply-add counts as 2 FLOPs. We count the matmuls (projections, attention
scores and values, lm_head); norms, RoPE and softmax are a rounding error. The bias
vectors a method adds to o_proj / down_proj outputs (FLAP-style compensation, AAPP's
restoration) are counted apart, one FLOP per element, so a record says whether a method
kept the matmul FLOPs identical and only added vector adds.
"""

from __future__ import annotations

from aapp.models.adapters import Geometry


def block_flops(g: Geometry, tokens: int, context: float, heads: int, kv_heads: int, channels: int) -> float:
    """One decoder block over `tokens` queries that each attend to `context` keys on average."""
    d, hd = g.hidden_size, g.head_dim
    proj = 2 * tokens * d * hd * (2 * heads + 2 * kv_heads)  # q, o and k, v
    attn = 2 * 2 * tokens * context * heads * hd            # scores and weighted values
    mlp = 2 * tokens * d * channels * 3                     # gate, up, down
    return proj + attn + mlp


def dense_block_flops(g: Geometry, tokens: int, context: float) -> float:
    return block_flops(g, tokens, context, g.num_heads, g.num_kv_heads, g.intermediate_size)


def probe_flops(g: Geometry, queries: int, context_tokens: int, mean_context: float) -> float:
    """The probe: q/o/MLP for its query tokens, k/v for every context token it reads."""
    d, hd = g.hidden_size, g.head_dim
    qo = 2 * queries * d * hd * 2 * g.num_heads
    kv = 2 * context_tokens * d * hd * 2 * g.num_kv_heads
    attn = 2 * 2 * queries * mean_context * g.num_heads * hd
    mlp = 2 * queries * d * g.intermediate_size * 3
    return qo + kv + attn + mlp


def mlp_probe_flops(g: Geometry, tokens: int) -> float:
    """The MLP half of the probe during decode: gate and up for its tokens (down is not needed,
    the statistic is its input)."""
    return 2 * tokens * g.hidden_size * g.intermediate_size * 2


def bias_flops(g: Geometry, tokens: int, sites: int) -> float:
    """Adding a [hidden_size] bias to `tokens` outputs at each of `sites` sites."""
    return tokens * g.hidden_size * sites


def lm_head_flops(g: Geometry, tokens: int) -> float:
    return 2 * tokens * g.hidden_size * g.vocab_size


# -- bytes a decode step reads ----------------------------------------------------------------------
# Decode is bound by memory: each step reads the weights that run once (for every row of the batch)
# and each row's KV cache. Norms, biases and the embedding row are a rounding error, as above.
def block_weight_bytes(g: Geometry, heads: int, kv_heads: int, channels: int, itemsize: int) -> float:
    """The q, k, v, o and MLP weights of a block that keeps these structures."""
    d, hd = g.hidden_size, g.head_dim
    return (d * hd * (2 * heads + 2 * kv_heads) + 3 * d * channels) * itemsize


def lm_head_bytes(g: Geometry, itemsize: int) -> float:
    return g.vocab_size * g.hidden_size * itemsize


def kv_read_bytes(g: Geometry, kv_heads: int, rows: int, context: int, itemsize: int) -> float:
    """Keys and values of `kv_heads` heads over `context` cached positions, for `rows` rows."""
    return 2 * kv_heads * g.head_dim * context * rows * itemsize
