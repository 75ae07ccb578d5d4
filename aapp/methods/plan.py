"""How many heads and MLP channels each layer keeps at a nominal ratio.

The nominal ratio is the fraction of prunable attention+MLP compute removed, averaged
over layers. As in Probe Pruning, the first `dense_layers` layers stay whole (early
layers are the most sensitive) and the others are pruned harder to make up for them.
Kept MLP channels are rounded to a multiple that suits the kernels' tiles.

Under GQA the number of kept kv heads is fixed by the plan too: the fewest groups
that can hold the kept query heads, ceil(heads / group_size). A kv head is still
dropped only when all its query heads are; fixing the count makes a layer's compute
a function of the ratio alone, so every method (PP, AAPP, the baselines) costs
exactly the same FLOPs at a ratio, and kernels see one shape per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aapp.errors import AappError
from aapp.models.adapters import Geometry


@dataclass(frozen=True)
class LayerBudget:
    """Kept counts for one layer."""

    heads: int      # query heads kept
    kv_heads: int   # key/value heads (GQA groups) kept
    channels: int   # MLP intermediate channels kept

    def to_dict(self) -> dict:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "channels": self.channels}


@dataclass(frozen=True)
class PrunePlan:
    ratio: float
    layer_ratios: tuple[float, ...]
    budgets: tuple[LayerBudget, ...]
    channel_tile: int  # kept MLP channels of a pruned layer are a multiple of this (see channel_tile)
    prefill_dense: bool = False  # the prefill runs unpruned (PruneOptions.prefill="dense")

    @property
    def first_pruned(self) -> int | None:
        """The first layer the plan prunes (None: it prunes none); every layer before it runs dense,
        so its block input is the dense model's."""
        return next((i for i, r in enumerate(self.layer_ratios) if r > 0), None)

    @property
    def last_dense_read(self) -> int | None:
        """The last layer whose block input at prefill is the dense model's (None: every layer's): the
        first pruned one, or none under a dense prefill, where a reader of any layer sees dense inputs."""
        return None if self.prefill_dense else self.first_pruned

    def is_dense(self, layer: int, geometry: Geometry) -> bool:
        b = self.budgets[layer]
        return (b.heads, b.kv_heads, b.channels) == (geometry.num_heads, geometry.num_kv_heads,
                                                      geometry.intermediate_size)


MAX_LAYER_RATIO = 0.95  # the most of one layer a plan prunes


def max_ratio(num_layers: int, dense_layers: int, max_layer_ratio: float = MAX_LAYER_RATIO) -> float:
    """The largest nominal ratio a model of `num_layers` can be pruned to with `dense_layers` kept
    dense, rounded down to 3 decimals so that the value said is one that runs."""
    pruned = num_layers - dense_layers
    return math.floor(max_layer_ratio * pruned / num_layers * 1000) / 1000


def check_ratio(ratio: float, num_layers: int | None = None, dense_layers: int = 3,
                max_layer_ratio: float = MAX_LAYER_RATIO) -> None:
    """`ratio` in [0, 1), and, given the model's layer count, one its plan can reach with `dense_layers`
    (fewer than the model's layers: a plan with every layer dense would prune nothing at `ratio`)."""
    if not 0.0 <= ratio < 1.0:
        raise AappError(f"ratio must be in [0, 1), got {ratio}")
    if num_layers is None or ratio == 0:
        return
    if dense_layers >= num_layers:
        raise AappError(f"dense_layers={dense_layers} keeps every layer of this {num_layers}-layer model dense, "
                        f"so ratio {ratio} has no layer to prune; give dense_layers {num_layers - 1} or fewer")
    n, dense = num_layers, dense_layers
    if ratio * n / (n - dense) > max_layer_ratio:
        raise AappError(
            f"ratio {ratio} needs {ratio * n / (n - dense):.2f} of each of the {n - dense} pruned layers "
            f"(the first {dense} stay dense); the most this {n}-layer model allows is "
            f"{max_ratio(n, dense_layers, max_layer_ratio)} with dense_layers={dense_layers}; "
            "lower the ratio or dense_layers")


def make_plan(geometry: Geometry, ratio: float, *, dense_layers: int = 3, channel_multiple: int = 64,
              max_layer_ratio: float = MAX_LAYER_RATIO, prefill_dense: bool = False) -> PrunePlan:
    """Per-layer kept counts for `ratio`; see the module docstring for the rules."""
    check_ratio(ratio, geometry.num_layers, dense_layers, max_layer_ratio)
    n = geometry.num_layers
    dense = dense_layers if ratio > 0 else n
    pruned_layers = n - dense
    layer_ratio = min(ratio * n / pruned_layers, max_layer_ratio) if pruned_layers else 0.0
    budgets, ratios = [], []
    for i in range(n):
        r = 0.0 if i < dense else layer_ratio
        ratios.append(r)
        heads = _kept_heads(geometry.num_heads, r)
        budgets.append(LayerBudget(heads=heads, kv_heads=math.ceil(heads / geometry.group_size),
                                   channels=_kept_channels(geometry.intermediate_size, r, channel_multiple)))
    return PrunePlan(ratio=ratio, layer_ratios=tuple(ratios), budgets=tuple(budgets),
                     channel_tile=channel_tile(geometry.intermediate_size, channel_multiple), prefill_dense=prefill_dense)


def _kept_heads(total: int, r: float) -> int:
    return max(1, min(total, round(total * (1.0 - r))))


def channel_tile(total: int, multiple: int) -> int:
    """What a pruned layer's kept MLP channels are rounded to: the kernel tile `multiple`, except in
    small (test) models, under four tiles wide, which are left exact."""
    return multiple if total >= 4 * multiple else 1


def _kept_channels(total: int, r: float, multiple: int) -> int:
    if r == 0.0:
        return total
    tile = channel_tile(total, multiple)
    # Round to the tile, but never below one tile.
    keep = max(tile, tile * round(total * (1.0 - r) / tile))
    return max(1, min(total, int(keep)))
