"""AAPP's alignment-critical heads and channels, per layer, from calibration statistics.

  setdiff      (default) Wei et al. 2024: of the top 2n channels by importance (Wanda-sp) on
               harmful prompts, those not among the top 2n on general text, best n kept (so up
               to n); n = protect x channels, so protect must stay below 0.5 (at 0.5 both pools
               are every channel)
  diff         standardised harmful-minus-harmless mean activation, |z|
  attribution  how much a channel writes the refusal direction into the residual:
               |(W[:, k] . d) * (mean_harmful_k - mean_harmless_k)|, with d the unit
               difference-of-means direction at the layer's output (its refusal mass, which
               aapp.methods.aapp.allocation also spreads protection and budget by)

How many heads and channels a layer protects is the caller's: `protect` x units in every layer,
or spread by refusal mass (aapp.methods.aapp.allocation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aapp.calibration.store import Calibration, SiteStats
from aapp.errors import AappError
from aapp.methods.aapp.allocation import attribution, protected_count
from aapp.methods.aapp.store import alignment
from aapp.methods.masks import top_k
from aapp.methods.scores import per_head, wanda_sp
from aapp.models.adapters import Geometry, LayerParts

CRITICAL = ("diff", "setdiff", "attribution")


@dataclass(frozen=True)
class CriticalSet:
    heads: torch.Tensor
    channels: torch.Tensor


def check_setdiff_pools(protect: float, g: Geometry) -> None:
    """setdiff's pools are the top 2n; at 2n >= all of them the set difference is empty."""
    for what, total in (("heads", g.num_heads), ("channels", g.intermediate_size)):
        n = protected_count(protect, total)
        if n and 2 * n >= total:
            raise AappError(f"critical=setdiff with protect={protect} protects nothing: its "
                            f"pools are the top {2 * n} of {total} {what}, i.e. all of them; "
                            "use a smaller protect")


def critical_set(kind: str, n_heads: int, n_channels: int, layer: int, parts: LayerParts, g: Geometry,
                 calib: Calibration) -> CriticalSet:
    """Layer `layer`'s `n_heads` critical heads and `n_channels` channels by `kind` (see the module
    docstring; setdiff may find fewer)."""
    a = alignment(calib)
    o, down = parts.o_proj.weight, parts.down_proj.weight
    if kind == "diff":
        attn, mlp = (_z(a.harmful.site(s), a.harmless.site(s), layer).abs() for s in ("attn", "mlp"))
    elif kind == "attribution":
        attn, mlp = (attribution(calib, s, layer, w) for s, w in (("attn", o), ("mlp", down)))
    else:
        heads = _setdiff(per_head(_importance(a.harmful.attn, layer, o), g.head_dim),
                         per_head(_importance(calib.attn, layer, o), g.head_dim), n_heads)
        channels = _setdiff(_importance(a.harmful.mlp, layer, down), _importance(calib.mlp, layer, down), n_channels)
        return CriticalSet(heads.to(o.device), channels.to(o.device))
    return CriticalSet(top_k(per_head(attn, g.head_dim), n_heads).to(o.device), top_k(mlp, n_channels).to(o.device))


def _z(harmful: SiteStats, harmless: SiteStats, layer: int) -> torch.Tensor:
    """Standardised difference of post-instruction means, harmful minus harmless."""
    vh, vs = harmful.variance[layer], harmless.variance[layer]
    return (harmful.mean[layer] - harmless.mean[layer]) / ((vh + vs) / 2 + 1e-6).sqrt()


def _importance(stats: SiteStats, layer: int, weight: torch.Tensor) -> torch.Tensor:
    return wanda_sp(stats.sq_mean[layer].to(weight.device), weight).cpu()


def _setdiff(safety: torch.Tensor, utility: torch.Tensor, n: int) -> torch.Tensor:
    """Top-2n by safety importance that are not in the top-2n by utility, best n of them."""
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    pool = min(len(safety), 2 * n)
    cand = top_k(safety, pool)
    util_top = set(top_k(utility, pool).tolist())
    diff = torch.tensor([c for c in cand.tolist() if c not in util_top], dtype=torch.long)
    if not len(diff):
        return diff
    return diff[top_k(safety[diff], min(n, len(diff)))]
