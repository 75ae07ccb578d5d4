"""Probe Pruning (Le et al., ICLR 2025): probe-informed, history-fused, per-batch selection."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aapp.methods.base import LayerContext, Method, Selection, select_top
from aapp.pruning.scores import fuse, per_head, ppsp


@dataclass(frozen=True)
class PPOptions:
    """`fuse_history=False` scores on the probe alone (an ablation)."""

    fuse_history: bool = True


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
        w = self._wnorm[ctx.layer]
        return per_head(c_attn * w["attn"], ctx.geometry.head_dim), c_mlp * w["mlp"]

    def select(self, ctx: LayerContext) -> Selection:
        heads, channels = self.channel_scores(ctx)
        return Selection(select_top(heads, channels, ctx.budget, ctx.geometry))
