"""Static structured baselines scored from calibration statistics only: Wanda-sp and FLAP.

Their masks do not depend on the batch, so they are computed once at bind time. Which heads
and channels a layer keeps, given their scores and its budget, is a `MaskRule`: `select_top` by
default; export asks for another through `with_mask_rule` (aapp.pruning.export_selection).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from aapp.methods.base import LayerContext, Method, Selection, compensation, select_top
from aapp.methods.masks import LayerMask
from aapp.methods.registry import Registration
from aapp.methods.scores import flap, per_head, wanda_sp


# (head_scores, channel_scores, budget, geometry) -> the kept heads and channels
MaskRule = Callable[..., LayerMask]


class StaticMethod(Method):
    mask_rule: MaskRule = staticmethod(select_top)

    def with_mask_rule(self, rule: MaskRule) -> "StaticMethod":
        """This method, unbound, choosing its masks by `rule` from the same scores and compensation."""
        fresh = copy.copy(self)
        fresh.__dict__.pop("_selection", None)
        fresh.mask_rule = rule
        return fresh

    def bind(self, model, adapter, geometry, plan, calib):
        super().bind(model, adapter, geometry, plan, calib)
        self._selection: dict[int, Selection] = {}
        for i, budget in enumerate(plan.budgets):
            parts = adapter.layer_parts(model, i)
            attn = self.site_scores("attn", i, parts.o_proj.weight)
            mlp = self.site_scores("mlp", i, parts.down_proj.weight)
            mask = self.choose(per_head(attn, geometry.head_dim), mlp, budget)
            self._selection[i] = self.compensated(i, mask, parts)

    def site_scores(self, site: str, layer: int, weight):
        raise NotImplementedError

    def choose(self, head_scores, channel_scores, budget) -> LayerMask:
        return self.mask_rule(head_scores, channel_scores, budget, self.geometry)

    def compensated(self, layer: int, mask: LayerMask, parts) -> Selection:
        return Selection(mask)

    def selection(self, layer: int) -> Selection:
        """The bound selection of one layer (the same for every batch)."""
        return self._selection[layer]

    def select(self, ctx: LayerContext) -> Selection:
        return self.selection(ctx.layer)


class WandaSP(StaticMethod):
    name = "wanda-sp"

    def site_scores(self, site, layer, weight):
        return wanda_sp(self.calib.site(site).sq_mean[layer].to(weight.device), weight)


class Flap(StaticMethod):
    """FLAP (An et al., AAAI 2024) fluctuation metric with its mean-value bias compensation.

    We keep the shared per-layer budget (not FLAP's global adaptive structure), so all
    baselines are compared at the same per-layer compute.
    """

    name = "flap"

    def __init__(self, compensate: bool = True):
        self.compensate = compensate  # off only as an ablation: FLAP's metric without its compensation

    def site_scores(self, site, layer, weight):
        return flap(self.calib.site(site).variance[layer].to(weight.device), weight)

    def compensated(self, layer, mask, parts):
        if not self.compensate:
            return Selection(mask)
        return compensation(self.calib, layer, parts, mask, self.geometry)


WANDA_SP = Registration("wanda-sp", lambda spec, _: WandaSP(), "structured Wanda, static from calibration")
FLAP = Registration("flap", lambda spec, _: Flap(compensate=spec.variant != "no-comp"),
                    "FLAP's fluctuation metric with its bias compensation, static from calibration",
                    variants={"no-comp": "without its compensation (an ablation)"},
                    compensation_note="flap always compensates")
