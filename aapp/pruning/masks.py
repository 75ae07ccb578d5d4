"""Which heads and channels a layer keeps, and the index sets the pruned forward needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aapp.models.adapters import Geometry


@dataclass(frozen=True)
class LayerMask:
    """Kept structures of one layer; every index tensor is sorted int64.

    With GQA a key/value head is kept while any of its query heads is, and dropped
    only when all of them are.
    """

    heads: torch.Tensor     # kept query heads
    kv_heads: torch.Tensor  # kept key/value heads
    channels: torch.Tensor  # kept MLP intermediate channels

    @classmethod
    def full(cls, g: Geometry, device=None) -> "LayerMask":
        return cls.from_kept(torch.arange(g.num_heads, device=device),
                             torch.arange(g.intermediate_size, device=device), g)

    @classmethod
    def from_kept(cls, heads: torch.Tensor, channels: torch.Tensor, g: Geometry) -> "LayerMask":
        heads = heads.sort().values.long()
        kv = torch.unique(heads // g.group_size)
        return cls(heads=heads, kv_heads=kv, channels=channels.sort().values.long())

    def q_rows(self, head_dim: int) -> torch.Tensor:
        """Rows of q_proj (= input columns of o_proj) for the kept heads."""
        return _expand(self.heads, head_dim)

    def kv_rows(self, head_dim: int) -> torch.Tensor:
        return _expand(self.kv_heads, head_dim)

    def kv_for_heads(self, g: Geometry) -> torch.Tensor | None:
        """For each kept query head, the position of its kv head among the kept kv heads.

        None when every kept kv head serves the same number of kept query heads in
        order, so attention can use its usual grouped (repeat) path.
        """
        owner = self.heads // g.group_size
        local = torch.searchsorted(self.kv_heads, owner)
        per_kv = torch.bincount(local, minlength=len(self.kv_heads))
        if len(per_kv) and bool((per_kv == per_kv[0]).all()):
            return None
        return local


def _expand(units: torch.Tensor, width: int) -> torch.Tensor:
    return (units[:, None] * width + torch.arange(width, device=units.device)).reshape(-1)


def top_k(scores: torch.Tensor, k: int, protect: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k highest scores (sorted), taking protected indices first.

    Protected indices are treated as infinitely important; if there are more of them
    than k, the highest-scoring protected ones are kept. Ties break toward the lower
    index, so selection is deterministic.
    """
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    if protect is not None and protect.numel():
        is_protected = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        is_protected[protect] = True
        flags = is_protected[order]
        order = torch.cat([order[flags], order[~flags]])
    return order[:k].sort().values
