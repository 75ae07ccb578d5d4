"""Probe Pruning (Le et al., ICLR 2025): probe-informed, history-fused, per-batch selection."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aapp.errors import AappError
from aapp.methods.base import LayerContext, Method, Selection, compensated, select_top
from aapp.pruning.scores import fuse, per_head, ppsp


@dataclass(frozen=True)
class PPOptions:
    """`fuse_history=False` scores on the probe alone (an ablation). `head_score` reduces a head's
    channel scores by "sum" (as specified) or "l2" (as the reference code does). `compensate` adds back the
    pruned channels' calibration-mean output as biases, as FLAP does; the reference code has it as
    an option (`bias`) that the paper's PP runs leave off, so it is off by default."""

    fuse_history: bool = True
    head_score: str = "sum"
    compensate: bool = False

    def __post_init__(self):
        if self.head_score not in ("sum", "l2"):
            raise AappError(f"head_score must be 'sum' or 'l2', got {self.head_score!r}")


class ProbePruning(Method):
    name = "pp"
    uses_probe = True

    def __init__(self, options: PPOptions = PPOptions()):
        self.options = options

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
        probe, hist = ctx.probe, ctx.history
        c_attn, c_mlp = probe.attn, probe.mlp
        if self.options.fuse_history and hist is not None:
            c_attn, c_mlp = fuse(probe.attn, hist["attn"]), fuse(probe.mlp, hist["mlp"])
        return self.scores(ctx.layer, c_attn, c_mlp)

    def scores(self, layer: int, attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PPsp of per-channel activation statistics: per head at attention, per channel at the MLP."""
        w = self._wnorm[layer]
        return per_head(attn * w["attn"], self.geometry.head_dim, self.options.head_score), mlp * w["mlp"]

    def select(self, ctx: LayerContext) -> Selection:
        heads, channels = self.channel_scores(ctx)
        return self.finish(ctx, select_top(heads, channels, ctx.budget, ctx.geometry))

    def finish(self, ctx: LayerContext, mask) -> Selection:
        if self.options.compensate:
            return compensated(self.calib, ctx.layer, ctx.parts, mask, ctx.geometry)
        return Selection(mask)
