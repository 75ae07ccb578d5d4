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

    def query_slots(self, g: Geometry) -> tuple[torch.Tensor, int] | None:
        """Where each kept query head sits when every kept kv head gets `width` query slots.

        None when the kept query heads already split evenly over the kept kv heads, so
        attention runs its usual grouped path. Otherwise attention runs on the query heads
        padded to `width` per kv head (zero rows whose outputs are dropped): still one
        grouped call, where giving each query head its own copy of its kv head would copy
        the whole KV cache at every decode step. Returns (slot of each kept head, width).
        """
        owner = self.heads // g.group_size
        local = torch.searchsorted(self.kv_heads, owner)
        per_kv = torch.bincount(local, minlength=len(self.kv_heads))
        if len(per_kv) and bool((per_kv == per_kv[0]).all()):
            return None
        width = int(per_kv.max())
        first = torch.cumsum(per_kv, 0) - per_kv  # position of each kv head's first kept query head
        rank = torch.arange(len(self.heads), device=self.heads.device) - first[local]
        return local * width + rank, width


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


def top_heads_in_groups(scores: torch.Tensor, k: int, group_size: int, n_groups: int,
                        protect: torch.Tensor | None = None) -> torch.Tensor:
    """k query heads spread over exactly `n_groups` kv groups, protected heads first.

    The plan fixes how many kv groups a layer keeps (so compute does not depend on which
    heads win). Groups holding a protected head come first (best protected score first),
    then the groups with the best heads; each chosen group gets at least one head, so
    exactly `n_groups` survive; the remaining slots go to protected, then top heads.
    """
    scores = scores.float()
    n_total = scores.shape[0] // group_size
    group_of = torch.arange(scores.shape[0], device=scores.device) // group_size
    protect = protect if protect is not None else torch.empty(0, dtype=torch.long, device=scores.device)
    prot_flag = torch.zeros_like(scores, dtype=torch.bool)
    prot_flag[protect] = True
    prot_best = torch.where(prot_flag, scores, torch.full_like(scores, -torch.inf)).view(n_total, group_size).max(-1).values
    best = scores.view(n_total, group_size).max(-1).values
    has_prot = torch.isfinite(prot_best)
    by_best = torch.sort(best, descending=True, stable=True).indices
    by_prot = torch.sort(prot_best, descending=True, stable=True).indices
    ordered = [int(g) for g in by_prot if has_prot[g]] + [int(g) for g in by_best if not has_prot[g]]
    chosen = set(ordered[:n_groups])
    head_order = [int(h) for h in torch.sort(scores, descending=True, stable=True).indices]
    in_chosen = [h for h in head_order if int(group_of[h]) in chosen]
    # One head per chosen group first (its best protected head, else its best head)...
    firsts = []
    for g in ordered[:n_groups]:
        members = [h for h in in_chosen if int(group_of[h]) == g]
        firsts.append(next((h for h in members if prot_flag[h]), members[0]))
    # ...then the other protected heads, then the rest, by score.
    rest_protected = [h for h in in_chosen if prot_flag[h] and h not in firsts]
    rest = [h for h in in_chosen if not prot_flag[h] and h not in firsts]
    picked = (firsts + rest_protected + rest)[:k]
    return torch.tensor(sorted(picked), dtype=torch.long, device=scores.device)
