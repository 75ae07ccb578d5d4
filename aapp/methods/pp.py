"""Probe Pruning (Le et al., ICLR 2025): probe-informed, history-fused, per-batch selection."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from aapp.errors import AappError
from aapp.methods.engine_options import PLAN_OPTIONS, PROBE_OPTIONS
from aapp.methods.base import LayerContext, Method, Selection, compensation, select_top
from aapp.methods.registry import MethodSpec, Registration
from aapp.methods.scores import fuse, per_head, ppsp

SCORES_FROM = ("fused", "probe", "history")
SITES = ("attn", "mlp")


@dataclass(frozen=True)
class PPScoring:
    """What PP scores, and what it adds back: fixed by the method's spec (its variant and `+comp`),
    not by options, so that each ablation has one name.

    `scores_from`: "fused" (PP: the probe fused with calibration history), "probe" (no history)
    or "history" (no probe: a static method on calibration alone); the last two are ablations.
    `head_score` reduces a head's channel scores by "sum" (as specified) or "l2" (as the reference
    code does). `head_fluctuation` scores heads on the fused mean square minus the calibration mean
    squared (FLAP's fluctuation) instead of the mean square: an ablation. `compensate` names the
    sites ("attn", "mlp") whose pruned channels' calibration-mean output is added back as a bias,
    as FLAP does; the reference code has it as an option (`bias`) that the paper's PP runs leave
    off, so it is off by default.
    """

    scores_from: str = "fused"
    head_score: str = "sum"
    head_fluctuation: bool = False
    compensate: tuple[str, ...] = ()

    def __post_init__(self):
        if self.scores_from not in SCORES_FROM:
            raise AappError(f"scores_from must be one of {', '.join(SCORES_FROM)}, got {self.scores_from!r}")
        if self.head_score not in ("sum", "l2"):
            raise AappError(f"head_score must be 'sum' or 'l2', got {self.head_score!r}")
        if not set(self.compensate) <= set(SITES):
            raise AappError(f"compensate names sites among {', '.join(SITES)}, got {self.compensate!r}")


class ProbePruning(Method):
    name = "pp"

    def __init__(self, scoring: PPScoring = PPScoring()):
        self.scoring = scoring

    @property
    def uses_probe(self) -> bool:
        return self.scoring.scores_from != "history"

    @property
    def engine_options(self) -> tuple[str, ...]:
        return PLAN_OPTIONS + (PROBE_OPTIONS if self.uses_probe else ())

    def settings(self) -> dict[str, object]:
        return {"scoring": self.scoring}

    def bind(self, model, adapter, geometry, plan, calib):
        super().bind(model, adapter, geometry, plan, calib)
        # ||W[:, k]^2||_2 depends only on weights: compute once, not per batch.
        self._wnorm = {}
        for i in range(geometry.num_layers):
            parts = adapter.layer_parts(model, i)
            self._wnorm[i] = {
                "attn": ppsp(torch.ones(parts.o_proj.weight.shape[1], device=parts.o_proj.weight.device),
                             parts.o_proj.weight),
                "mlp": ppsp(torch.ones(parts.down_proj.weight.shape[1], device=parts.down_proj.weight.device),
                            parts.down_proj.weight),
            }

    def channel_scores(self, ctx: LayerContext) -> tuple[torch.Tensor, torch.Tensor]:
        """PPsp scores (attention per head, MLP per channel) for this batch."""
        probe, hist, source = ctx.probe, ctx.history, self.scoring.scores_from
        if source == "history" or (source == "fused" and probe is None):
            c_attn, c_mlp = hist["attn"], hist["mlp"]
        elif source == "probe" or hist is None:
            c_attn, c_mlp = probe.attn, probe.mlp
        else:
            c_attn, c_mlp = fuse(probe.attn, hist["attn"]), fuse(probe.mlp, hist["mlp"])
        if self.scoring.head_fluctuation:
            mean = self.calib.attn.mean[ctx.layer].to(c_attn.device)
            c_attn = (c_attn - mean.square()).clamp(min=0)
        return self.ppsp_scores(ctx.layer, c_attn, c_mlp)

    def ppsp_scores(self, layer: int, attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PPsp of per-channel activation statistics: per head at attention, per channel at the MLP."""
        w = self._wnorm[layer]
        return per_head(attn * w["attn"], self.geometry.head_dim, self.scoring.head_score), mlp * w["mlp"]

    def select(self, ctx: LayerContext) -> Selection:
        heads, channels = self.channel_scores(ctx)
        return self.compensated(ctx, select_top(heads, channels, ctx.budget, ctx.geometry))

    def compensated(self, ctx: LayerContext, mask) -> Selection:
        if self.scoring.compensate:
            return compensation(self.calib, ctx.layer, ctx.parts, mask, ctx.geometry, self.scoring.compensate)
        return Selection(mask)


VARIANTS = {
    "probe-only": PPScoring(scores_from="probe"),
    "history-only": PPScoring(scores_from="history"),
    "head-l2": PPScoring(head_score="l2"),
    "fluct-heads": PPScoring(head_fluctuation=True, compensate=("attn",)),
}


def scoring_for(spec: MethodSpec) -> PPScoring:
    """The scoring a pp spec names: its variant's, with every site compensated under `+comp`."""
    scoring = VARIANTS[spec.variant] if spec.variant else PPScoring()
    return replace(scoring, compensate=SITES) if spec.compensate else scoring


def _build(spec: MethodSpec, _) -> ProbePruning:
    return ProbePruning(scoring_for(spec))


REGISTRATION = Registration(
    "pp", _build, "Probe Pruning: per-batch probe fused with calibration history",
    variants={"probe-only": "scores from the probe alone (no history)",
              "history-only": "scores from calibration history alone (no probe: static)",
              "head-l2": "a head's score is its channels' L2 norm (the reference code's), not their sum",
              "fluct-heads": "heads scored on their fluctuation, with FLAP's compensation at attention"},
    compensable=True)
