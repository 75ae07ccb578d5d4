"""Where AAPP puts protection and MLP budget over the layers when its gate fires, from refusal mass.

A unit's refusal mass is its attribution: how much of the harmful-minus-harmless shift it writes
along the refusal direction d at its layer's output, |(W[:, k] . d) * (mean_harmful_k - mean_harmless_k)|
(W = o_proj or down_proj). A layer's mass at a site is the sum over its units (a head's is the sum
over its head_dim channels). Two levers read it; both act on the pruned layers only (the dense ones
keep everything, so protection and budget there are moot):

  protect_by  flat: protect x heads and x channels in every layer. mass: the same total number of
              protected heads and of protected channels over the pruned layers, spread in proportion
              to each layer's mass at that site (`apportion`).
  layer_budget  flat: the plan's counts. risk: MLP channels move from layers with less mass than the
              mean to layers with more (`shift_channels`); the total is the plan's, to the channel.

Only MLP channels move. A channel costs the same in every layer (gate, up and down rows:
`aapp.pruning.flops.block_flops` is linear in channels with a per-layer-constant slope), so moving
them is FLOP-neutral exactly. A head's cost is not: under GQA the plan fixes a layer's kv heads as
ceil(heads / group), so one more query head may or may not bring a kv head with it, and layers with
a sliding window attend to fewer keys than global ones; moving heads would change compute.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from aapp.calibration.store import Calibration
from aapp.methods.aapp.store import alignment
from aapp.methods.plan import LayerBudget, PrunePlan
from aapp.models.adapters import Geometry, LayerParts

PROTECT_BY = ("flat", "mass")
LAYER_BUDGET = ("flat", "risk")


def refusal_direction(calib: Calibration, layer: int) -> torch.Tensor:
    """The unit refusal direction at layer `layer`'s output [D]: harmful minus harmless mean of
    the next layer's block input over the calibration prompts (the last layer, which has no next
    one in calibration, takes its own input's)."""
    a = alignment(calib)
    resid_h, resid_s = a.harmful.resid.mean, a.harmless.resid.mean
    out = min(layer + 1, resid_h.shape[0] - 1)  # the next layer's input is this layer's output
    d = resid_h[out] - resid_s[out]
    return d / d.norm().clamp(min=1e-12)


@torch.no_grad()
def attribution(calib: Calibration, site: str, layer: int, weight: torch.Tensor) -> torch.Tensor:
    """|(W[:, k] . d) * (mean_harmful_k - mean_harmless_k)| per input channel k of `weight`: the
    channel's share of the harmful-minus-harmless shift along the refusal direction d at this
    layer's output."""
    a = alignment(calib)
    gain = refusal_direction(calib, layer).to(weight.device, torch.float32) @ weight.float()  # [channels]
    shift = (a.harmful.site(site).mean[layer] - a.harmless.site(site).mean[layer]).to(gain.device)
    return (gain * shift).abs().cpu()


def refusal_mass(calib: Calibration, layer: int, parts: LayerParts) -> tuple[float, float]:
    """Layer `layer`'s refusal mass at attention (summed over its heads) and at the MLP."""
    return (float(attribution(calib, "attn", layer, parts.o_proj.weight).sum()),
            float(attribution(calib, "mlp", layer, parts.down_proj.weight).sum()))


def protected_count(protect: float, total: int) -> int:
    """Units a layer protects under protect_by="flat": `protect` of `total`, rounded half up."""
    return math.floor(protect * total + 0.5)


def apportion(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """`total` split in proportion to `weights` by largest remainder, each share at most its cap;
    what a capped share cannot hold goes to the others (by the same rule). Sums to exactly
    min(total, sum(caps)). All-zero weights share equally; ties go to the earlier index.
    Exact (rational) arithmetic, so float weights cannot make the shares miss the total."""
    out = [0] * len(weights)
    free = [i for i, c in enumerate(caps) if c > 0]
    left = min(total, sum(caps[i] for i in free))
    while left > 0:
        w = [Fraction(max(weights[i], 0.0)) for i in free]
        if sum(w) == 0:
            w = [Fraction(1)] * len(free)
        quota = [left * x / sum(w) for x in w]
        full = [i for i, q in zip(free, quota) if q >= caps[i]]
        if full:  # fill these to the cap and share the rest again among the others
            for i in full:
                out[i] = caps[i]
                left -= caps[i]
            free = [i for i in free if i not in full]
            continue
        base = [math.floor(q) for q in quota]
        for i, b in zip(free, base):
            out[i] = b
        # A share under its cap (q < cap) floors to at most cap - 1, so one more still fits.
        by_remainder = sorted(range(len(free)), key=lambda k: (base[k] - quota[k], -w[k], free[k]))
        for k in by_remainder[: left - sum(base)]:
            out[free[k]] += 1
        break
    return out


def protect_counts(plan: PrunePlan, g: Geometry, protect: float, masses: list[tuple[float, float]],
                   budgets: tuple[LayerBudget, ...], below_half: bool) -> list[tuple[int, int]]:
    """(heads, channels) protected per layer under protect_by="mass": flat's total over the pruned
    layers, spread by each layer's mass at that site, capped at what the layer keeps (`budgets`) and,
    for setdiff (`below_half`), below half the layer's units (see critical.check_setdiff_pools)."""
    pruned = [i for i, r in enumerate(plan.layer_ratios) if r > 0]
    shares = []
    for site, units in enumerate((g.num_heads, g.intermediate_size)):
        caps = [(budgets[i].heads, budgets[i].channels)[site] for i in pruned]
        if below_half:
            caps = [min(c, (units - 1) // 2) for c in caps]
        total = protected_count(protect, units) * len(pruned)
        shares.append(apportion(total, [masses[i][site] for i in pruned], caps))
    out = [(0, 0)] * g.num_layers
    for i, heads, channels in zip(pruned, *shares):
        out[i] = (heads, channels)
    return out


def shift_channels(plan: PrunePlan, intermediate: int, mlp_mass: list[float], shift: float) -> tuple[LayerBudget, ...]:
    """The plan's budgets with MLP channels moved toward the pruned layers of most refusal mass.

    A pruned layer's move is proportional to its MLP mass minus the pruned layers' mean (above the
    mean: it gains), scaled as far as the tightest layer allows: a layer gains at most `shift` x its
    pruned channels and gives at most `shift` x its kept channels above one tile. The gainers get what
    the givers lose, exactly (the side with less to move sets the amount). Moves are whole tiles
    (`plan.channel_tile`), so kept counts stay multiples of it, within [tile, intermediate]. A layer
    that cannot move a whole tile sits out. Heads do not move (see the module docstring); dense layers
    are untouched; shift 0 is the plan.
    """
    tile = plan.channel_tile
    pruned = [i for i, r in enumerate(plan.layer_ratios) if r > 0]
    budgets = list(plan.budgets)
    if not pruned:
        return tuple(budgets)
    mean = sum(mlp_mass[i] for i in pruned) / len(pruned)
    peak = max(abs(mlp_mass[i] - mean) for i in pruned)
    if not peak > 0:
        return tuple(budgets)
    # Moves are proportional to the excess, so its scale does not matter: relative to the largest, an
    # excess a billion times smaller is no signal (and dividing by a subnormal one would overflow).
    excess = {i: (mlp_mass[i] - mean) / peak for i in pruned}
    kept = {i: plan.budgets[i].channels for i in pruned}
    room = {i: int(shift * (intermediate - kept[i] if excess[i] > 0 else kept[i] - tile) // tile) for i in pruned}
    gainers = [i for i in pruned if excess[i] > 1e-9 and room[i] > 0]
    givers = [i for i in pruned if excess[i] < -1e-9 and room[i] > 0]
    if not gainers or not givers:
        return tuple(budgets)
    scale = min(room[i] / abs(excess[i]) for i in gainers + givers)  # tiles moved per unit of excess
    # Both sides would move the same in exact arithmetic; the tolerance keeps float error from losing a tile.
    tiles = min(min(math.floor(scale * sum(abs(excess[i]) for i in side) + 1e-9), sum(room[i] for i in side))
                for side in (gainers, givers))
    for side, sign in ((gainers, 1), (givers, -1)):
        moved = apportion(tiles, [abs(excess[i]) for i in side], [room[i] for i in side])
        for i, t in zip(side, moved):
            budgets[i] = LayerBudget(budgets[i].heads, budgets[i].kv_heads, kept[i] + sign * t * tile)
    return tuple(budgets)
