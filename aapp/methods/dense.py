"""No pruning, run through the engine so that FLOPs are counted the same way as for the others."""

from __future__ import annotations

from aapp.methods.base import LayerContext, Method, Selection
from aapp.methods.masks import LayerMask
from aapp.methods.registry import Registration


class Dense(Method):
    name = "dense"
    needs_calibration = False
    prunes = False
    engine_options = ()  # it prunes nothing, so no engine option applies

    def select(self, ctx: LayerContext) -> Selection:
        return Selection(LayerMask.full(ctx.geometry, ctx.residual.device))


REGISTRATION = Registration("dense", lambda spec, _: Dense(), "the unpruned model (the reference)")
