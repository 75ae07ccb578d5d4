"""Scaled dot-product attention over the kept heads, in plain torch ops.

The pruned attention owns this step instead of calling transformers' attention
registry: that registry is an internal interface (5.24 changed what it reads off the
module) and the pruned layer has fewer heads than the module it stands in for.
It reads only the mask transformers hands every attention layer, whose meaning is
public: a 4-D boolean (True = attend) or additive float mask, a 2-D padding mask
(flash-attention style), or None when the model knows the layer is purely causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(q_len: int, kv_len: int, window: int | None, device) -> torch.Tensor:
    """[q_len, kv_len] bool: the queries are the last q_len of kv_len positions (a cache precedes them)."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
           scaling: float, window: int | None) -> torch.Tensor:
    """softmax(q kᵀ · scaling + mask) v, grouped over kv heads.

    q: [B, hq, Sq, D]; k, v: [B, hkv, Skv, D] with hq a multiple of hkv (query heads of one
    kv head are adjacent, as in every supported family). `window` is the layer's sliding
    window, applied only where this function builds the mask itself: a mask transformers
    passes already holds it. Returns [B, hq, Sq, D].
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    is_causal = False
    if mask is None:
        fits_window = window is None or kv_len <= window
        if fits_window and q_len in (1, kv_len):
            is_causal = q_len > 1  # SDPA's is_causal aligns top-left: exact only when q_len == kv_len
        else:
            mask = causal_mask(q_len, kv_len, window, q.device)
    elif mask.dim() == 2:
        # [B, Skv] padding mask -> [B, 1, Sq, Skv]
        mask = mask.bool()[:, None, None, :] & causal_mask(q_len, kv_len, window, q.device)
    elif mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scaling,
                                          enable_gqa=q.shape[1] != k.shape[1])
