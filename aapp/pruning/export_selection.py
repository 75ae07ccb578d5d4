"""The export-compatible selection: the masks a smaller HF checkpoint can hold, for export and engine alike.

LlamaConfig, Qwen2Config and Gemma3TextConfig hold ONE `intermediate_size`, ONE `num_attention_heads`
and ONE `num_key_value_heads` for all layers, and HF attention gives every kv head the same number of
consecutive query heads. The engine's default plan keeps the first layers dense and keeps heads one by
one (a kv head goes only when all its query heads do), which these configs cannot express. So the
export runs an export-compatible plan, and the engine can run the very same masks:
  * every layer is pruned alike: the plan of `options.ratio` with `dense_layers=0`, whose
    MLP channel count (rounded to `channel_multiple`) is the same in every layer;
  * attention is pruned per GQA group: each kv group keeps the same number of query
    heads (at least 1), picked inside the group by the method's head scores, and every
    kv head stays. Without GQA (group size 1) each head is its own group, so heads (and
    their kv heads) go one by one. The kept count is the one nearest the plan's that also
    divides hidden_size, which LlamaConfig and Gemma3TextConfig demand (`export_heads`).
`export_compatible(method)` is the method with that selection and `export_options(options)`
the engine options; `prune_model(loaded, export_compatible(m), export_options(o), calib)`
computes what the exported checkpoint computes.
"""

from __future__ import annotations

import dataclasses

import torch

from aapp.calibration.store import Calibration
from aapp.errors import AappError
from aapp.methods.base import Method, Selection
from aapp.methods.masks import LayerMask, top_k
from aapp.methods.plan import LayerBudget, PrunePlan, make_plan
from aapp.methods.static import StaticMethod
from aapp.models.adapters import Geometry
from aapp.models.loading import LoadedModel
from aapp.pruning.engine import PruneOptions


def group_uniform_mask(head_scores: torch.Tensor, channel_scores: torch.Tensor, budget: LayerBudget,
                       g: Geometry) -> LayerMask:
    """Keep `export_heads` query heads spread evenly over the kv groups (all kv heads stay),
    the best of each group by score, and the budget's top channels. Without GQA, the top heads."""
    channels = top_k(channel_scores, budget.channels)
    n = export_heads(budget, g)
    G = g.group_size
    if G == 1:
        return LayerMask.from_kept(top_k(head_scores, n), channels, g)
    # Stable descending sort: ties go to the lower head, as in top_k.
    order = torch.sort(head_scores.float().view(g.num_kv_heads, G), dim=1, descending=True, stable=True).indices
    offsets = torch.arange(g.num_kv_heads, device=order.device)[:, None] * G
    heads = (order[:, : n // g.num_kv_heads] + offsets).reshape(-1)
    return LayerMask.from_kept(heads, channels, g)


def export_heads(budget: LayerBudget, g: Geometry) -> int:
    """Query heads an exported layer keeps: the count nearest the budget's (ties: more) that
    HF can hold, i.e. a whole number (at least 1) per kv group under GQA, any number without,
    and a divisor of hidden_size.

    LlamaConfig and Gemma3TextConfig reject heads that do not divide hidden_size (their
    validate_architecture runs at save and at load, even with head_dim set); Qwen2Config does
    not, but a Qwen2 export may be saved as LLaMA, so one rule holds for every family.
    """
    if g.group_size == 1:
        counts = range(1, g.num_heads + 1)
    else:
        counts = range(g.num_kv_heads, g.num_heads + 1, g.num_kv_heads)
    valid = [c for c in counts if g.hidden_size % c == 0] or list(counts)
    return min(valid, key=lambda c: (abs(c - budget.heads), -c))


def export_compatible(method: Method) -> Method:
    """`method`, unbound, selecting export-compatible masks (static methods only)."""
    if not isinstance(method, StaticMethod):
        raise AappError(f"export is for static methods only (wanda-sp, flap): {method.name!r} picks heads and "
                        "channels per batch, so no single smaller checkpoint computes it")
    return method.with_mask_rule(group_uniform_mask)


def export_options(options: PruneOptions) -> PruneOptions:
    """Engine options that run the export's plan (every layer pruned alike)."""
    return dataclasses.replace(options, dense_layers=0)


def export_plan(g: Geometry, options: PruneOptions) -> PrunePlan:
    return make_plan(g, options.ratio, dense_layers=0, channel_multiple=options.channel_multiple)


def layer_selections(loaded: LoadedModel, method: Method, options: PruneOptions,
                     calib: Calibration | None) -> list[Selection]:
    """Every layer's export-compatible selection, exactly as the engine would run it."""
    compat = export_compatible(method)
    compat.check_calibration(calib)
    if calib is not None:
        calib.check_model(loaded.fingerprint, loaded.name, loaded.geometry)
    g = loaded.geometry
    compat.bind(loaded.model, loaded.adapter, g, export_plan(g, options), calib)
    return [compat.selection(i) for i in range(g.num_layers)]
