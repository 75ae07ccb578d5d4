"""The pruned forward of one decoder layer: attention and MLP over kept structures only.

`PrunedAttention` and `PrunedMLP` are swapped in for a layer's `self_attn` and `mlp`
while a model is pruned. They read the layer's current `LayerRuntime` (set once per
batch by the engine) and run only the kept rows/columns through a LinearBackend,
so the FLOPs saved are real. With no mask set they call the original module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from aapp.models.adapters import Geometry, LayerParts
from aapp.models.kv_cache import cache_in
from aapp.pruning.attention import attend
from aapp.pruning.rope import apply_rope
from aapp.methods.masks import LayerMask


@dataclass
class LayerRuntime:
    """What the swapped modules of one layer need for the current batch."""

    index: int
    parts: LayerParts
    geometry: Geometry
    backend: object
    mask: LayerMask | None = None
    linears: dict = field(default_factory=dict)
    query_slots: tuple[torch.Tensor, int] | None = None  # see LayerMask.query_slots
    attn_bias: torch.Tensor | None = None  # FLAP-style compensation added to o_proj's output
    mlp_bias: torch.Tensor | None = None
    observe: object = None  # callable(site, kept_idx, x_kept) for history updates, or None
    reselect: object = None  # callable(mlp_input) that re-picks MLP channels during decode
    reprobe: bool = False    # set by the engine when the next MLP call should re-pick
    # The kept kv heads, when the KV cache holds every head (an unpruned prefill, PruneOptions.prefill).
    cache_kv_heads: torch.Tensor | None = None
    # Rows with selections of their own (PruneOptions.prefill="dense"): the batch runs the union of their
    # kept structures, each row with 1 where it keeps a structure of `mask` and 0 where it does not.
    row_heads: torch.Tensor | None = None     # [B, kept heads]
    row_channels: torch.Tensor | None = None  # [B, kept channels]

    def set_mask(self, mask: LayerMask | None, attn_bias=None, mlp_bias=None) -> None:
        """Prepare the kept-weight linears once for this batch (reused across decode steps)."""
        self.mask, self.attn_bias, self.mlp_bias = mask, attn_bias, mlp_bias
        self.row_heads = self.row_channels = None
        self.linears = {}
        if mask is None:
            return
        p, g, b = self.parts, self.geometry, self.backend
        q_rows, kv_rows = mask.q_rows(g.head_dim), mask.kv_rows(g.head_dim)
        self.linears = {
            "q": b.output_gather(p.q_proj.weight, p.q_proj.bias, q_rows),
            "k": b.output_gather(p.k_proj.weight, p.k_proj.bias, kv_rows),
            "v": b.output_gather(p.v_proj.weight, p.v_proj.bias, kv_rows),
            "o": b.input_gather(p.o_proj.weight, q_rows),
            "up": b.gated_up(p.gate_proj.weight, p.up_proj.weight, mask.channels, g.activation),
            "down": b.input_gather(p.down_proj.weight, mask.channels),
        }
        self.query_slots = mask.query_slots(g)

    def set_row_masks(self, selections: list) -> None:
        """Each row's own selection (None: the row keeps everything): the batch runs their union, and a
        row's heads and channels outside its own selection are zeroed, which removes them exactly as its
        own pruned forward would (only the order of the matmuls' sums can differ)."""
        g = self.geometry
        device = self.parts.o_proj.weight.device
        full = LayerMask.full(g, device)
        masks = [full if s is None else s.mask for s in selections]
        union = LayerMask.from_kept(torch.unique(torch.cat([m.heads for m in masks])),
                                    torch.unique(torch.cat([m.channels for m in masks])), g)

        def rows_bias(site: str):
            biases = [None if s is None else getattr(s, site) for s in selections]
            if all(b is None for b in biases):
                return None
            zero = torch.zeros(g.hidden_size, device=device)
            return torch.stack([zero if b is None else b.to(device).float() for b in biases])[:, None, :]  # [B, 1, D]

        self.set_mask(union, rows_bias("attn_bias"), rows_bias("mlp_bias"))
        if any(len(m.heads) != len(union.heads) or len(m.channels) != len(union.channels) for m in masks):
            self.row_heads = torch.stack([torch.isin(union.heads, m.heads) for m in masks]).float()
            self.row_channels = torch.stack([torch.isin(union.channels, m.channels) for m in masks]).float()


class PrunedAttention(nn.Module):
    """A layer's attention over its kept heads; the model's own module while no mask is set."""

    def __init__(self, rt: LayerRuntime, original: nn.Module):
        super().__init__()
        self.rt = rt
        self.__dict__["original"] = original  # not a submodule: state_dict keys stay those of the model
        self.layer_idx = original.layer_idx

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        rt = self.rt
        if rt.mask is None:
            return self.original(hidden_states, position_embeddings=position_embeddings,
                                 attention_mask=attention_mask, **kwargs)
        g, parts, lin = rt.geometry, rt.parts, rt.linears
        B, S, _ = hidden_states.shape
        # x: [B, S, D] -> q: [B, hq, S, hd], k/v: [B, hkv, S, hd] over kept heads only
        q = lin["q"](hidden_states).view(B, S, -1, g.head_dim).transpose(1, 2)
        k = lin["k"](hidden_states).view(B, S, -1, g.head_dim).transpose(1, 2)
        v = lin["v"](hidden_states).view(B, S, -1, g.head_dim).transpose(1, 2)
        if parts.q_norm is not None:
            q, k = parts.q_norm(q), parts.k_norm(k)
        cos, sin = position_embeddings
        q, k = apply_rope(q, k, cos, sin)
        cache = cache_in(kwargs)
        if cache is not None and rt.cache_kv_heads is not None:
            # The cache holds every kv head: write the kept ones in place (the pruned ones are never read
            # again, so they get zeros) and read the kept ones back.
            kept = rt.cache_kv_heads
            full_k, full_v = (t.new_zeros(B, g.num_kv_heads, S, g.head_dim) for t in (k, v))
            full_k[:, kept], full_v[:, kept] = k, v
            k, v = cache.update(full_k, full_v, self.layer_idx)
            k, v = k[:, kept], v[:, kept]
        elif cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # k/v: [B, hkv, past + S, hd] (a window on sliding layers)
        if rt.query_slots is not None:
            # Kept query heads are spread unevenly over the kept kv heads: pad each group with zero queries.
            slots, width = rt.query_slots
            padded = q.new_zeros(B, k.shape[1] * width, S, g.head_dim)
            padded[:, slots] = q
            q = padded
        out = attend(q, k, v, attention_mask, scaling=g.attn_scaling, window=g.sliding_window[self.layer_idx])
        if rt.query_slots is not None:
            out = out[:, rt.query_slots[0]]  # [B, hq_padded, S, hd] -> the kept heads
        out = out.transpose(1, 2).reshape(B, S, -1)  # [B, S, hq_kept * hd]
        if rt.row_heads is not None:  # each row's own heads of the union
            out = out * rt.row_heads.repeat_interleave(g.head_dim, dim=1)[:, None, :].to(out.dtype)
        if rt.observe is not None:
            rt.observe("attn", rt.mask.q_rows(g.head_dim), out)
        y = lin["o"](out)
        if parts.o_proj.bias is not None:
            y = y + parts.o_proj.bias
        if rt.attn_bias is not None:
            y = y + rt.attn_bias.to(y.dtype)
        return y, None


class PrunedMLP(nn.Module):
    def __init__(self, rt: LayerRuntime, original: nn.Module):
        super().__init__()
        self.rt = rt
        self.__dict__["original"] = original

    def forward(self, x):
        rt = self.rt
        if rt.mask is None:
            return self.original(x)
        if rt.reprobe and rt.reselect is not None:
            rt.reprobe = False
            rt.reselect(x)
        h = rt.linears["up"](x)  # [B, S, kept]
        if rt.row_channels is not None:  # each row's own channels of the union
            h = h * rt.row_channels[:, None, :].to(h.dtype)
        if rt.observe is not None:
            rt.observe("mlp", rt.mask.channels, h)
        y = rt.linears["down"](h)
        if rt.parts.down_proj.bias is not None:
            y = y + rt.parts.down_proj.bias
        if rt.mlp_bias is not None:
            y = y + rt.mlp_bias.to(y.dtype)
        return y
