"""Probe Pruning's probe: a few of the batch's tokens run through a full-width block, so that
a method sees this batch's activations before it picks what the batch keeps.

`choose_probe` picks the tokens, `run_probe` runs them through attention and the MLP at
prefill, and `mlp_probe` is the MLP half alone, which decode-time re-selection (`reprobe`)
runs on the current decode tokens (heads cannot change there: the KV cache holds them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aapp.methods.base import ProbeStats
from aapp.methods.masks import top_k
from aapp.models.adapters import Geometry, LayerParts, activation_fn
from aapp.pruning.rope import apply_rope


def choose_probe(x: torch.Tensor, token_mask: torch.Tensor, sample_frac: float, position_frac: float):
    """Pick the probe: the samples and positions with the largest residual norms.

    Samples are ranked by the mean L2 norm of their non-pad tokens; positions by the
    summed norm over the chosen samples. Returns sorted (samples, positions).
    """
    norms = x.float().norm(dim=-1) * token_mask  # [B, S], pads -> 0
    counts = token_mask.sum(-1).clamp(min=1)
    B, S = norms.shape
    n_samples = max(1, math.ceil(B * sample_frac))
    samples = top_k(norms.sum(-1) / counts, n_samples)
    valid_positions = int(token_mask[samples].any(0).sum())
    n_positions = max(1, math.ceil(valid_positions * position_frac))
    positions = top_k(norms[samples].sum(0), n_positions)
    return samples, positions


def mlp_sq_mean(parts: LayerParts, g: Geometry, m: torch.Tensor) -> torch.Tensor:
    """Mean square per channel of the down_proj input for MLP inputs m [N, D] -> [intermediate]."""
    h = activation_fn(g.activation)(F.linear(m, parts.gate_proj.weight)) * F.linear(m, parts.up_proj.weight)
    return h.float().square().mean(0)


def mlp_probe(parts: LayerParts, g: Geometry, x: torch.Tensor, sample_frac: float, attn: torch.Tensor) -> ProbeStats:
    """The MLP half of the probe on MLP inputs x [B, S, D] (normed, as the MLP receives them):
    the samples with the largest norms; `attn` is carried over from the prefill probe."""
    n = max(1, math.ceil(x.shape[0] * sample_frac))
    xs = x[top_k(x.float().norm(dim=-1).sum(-1), n)]
    return ProbeStats(attn=attn, mlp=mlp_sq_mean(parts, g, xs.reshape(-1, xs.shape[-1])),
                      tokens=xs.shape[0] * xs.shape[1], context=0)


def run_probe(parts: LayerParts, g: Geometry, layer_idx: int, x: torch.Tensor, samples: torch.Tensor,
              positions: torch.Tensor, valid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> ProbeStats:
    """Run the probe through the full-width block.

    x: [B, S, D] block input; samples: [b] rows; positions: [s] sorted columns;
    valid: [B, S] non-pad tokens; cos/sin: [B, S, hd]. The probe's queries are the
    chosen positions of the chosen samples; they attend to every earlier non-pad
    token of their own sample (causally, with the layer's sliding window), so the
    attention half sees the context it would see in the real forward.
    """
    xs = x[samples]                                  # [b, S, D]
    vs = valid[samples]                              # [b, S]
    h = parts.input_norm(xs)
    b, S, _ = h.shape
    q = F.linear(h[:, positions], parts.q_proj.weight, parts.q_proj.bias).view(b, len(positions), -1, g.head_dim)
    k = F.linear(h, parts.k_proj.weight, parts.k_proj.bias).view(b, S, -1, g.head_dim)
    v = F.linear(h, parts.v_proj.weight, parts.v_proj.bias).view(b, S, -1, g.head_dim)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if parts.q_norm is not None:
        q, k = parts.q_norm(q), parts.k_norm(k)
    # Without explicit position_ids HF builds one RoPE table for the whole batch ([1, S, hd]).
    c = cos.expand(x.shape[0], -1, -1)[samples]
    s_ = sin.expand(x.shape[0], -1, -1)[samples]
    q, _ = apply_rope(q, q, c[:, positions], s_[:, positions])
    k, _ = apply_rope(k, k, c, s_)
    key_pos = torch.arange(S, device=x.device)
    allowed = (key_pos[None, :] <= positions[:, None])  # [s, S] causal
    window = g.sliding_window[layer_idx]
    if window is not None:
        allowed &= positions[:, None] - key_pos[None, :] < window
    allowed = allowed[None] & vs[:, None, :]         # [b, s, S]
    query_ok = vs[:, positions]                      # [b, s]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # pad queries: any finite row, excluded below
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=g.attn_scaling,
                                          enable_gqa=q.shape[1] != k.shape[1])
    attn = attn.transpose(1, 2).reshape(b, len(positions), -1)  # [b, s, H*hd]
    keep = query_ok.reshape(-1)
    attn_flat = attn.reshape(-1, attn.shape[-1])[keep]
    a = F.linear(attn, parts.o_proj.weight, parts.o_proj.bias)
    if parts.post_attn_norm is not None:
        a = parts.post_attn_norm(a)
    r = xs[:, positions] + a
    m = parts.pre_mlp_norm(r)
    return ProbeStats(
        attn=attn_flat.float().square().mean(0),
        mlp=mlp_sq_mean(parts, g, m.reshape(-1, m.shape[-1])[keep]),
        tokens=int(keep.sum()),
        context=int(vs.sum()),
    )
