"""Heads from one method and MLP channels from another: an ablation that shows which half of a
method its result comes from (e.g. PP's heads with FLAP's channels)."""

from __future__ import annotations

from aapp.methods.base import LayerContext, Method, Selection
from aapp.methods.masks import LayerMask
from aapp.methods.pp import ProbePruning
from aapp.methods.registry import MethodSpec, Registration
from aapp.methods.static import Flap


class Hybrid(Method):
    name = "hybrid"

    def __init__(self, heads_from: Method, channels_from: Method):
        self.heads_from, self.channels_from = heads_from, channels_from

    @property
    def uses_probe(self) -> bool:
        return self.heads_from.uses_probe or self.channels_from.uses_probe

    def bind(self, *args) -> None:
        super().bind(*args)
        self.heads_from.bind(*args)
        self.channels_from.bind(*args)

    def begin_batch(self, decision=None) -> None:
        self.heads_from.begin_batch(decision)
        self.channels_from.begin_batch(decision)

    def select(self, ctx: LayerContext) -> Selection:
        h, c = self.heads_from.select(ctx), self.channels_from.select(ctx)
        mask = LayerMask.from_kept(h.mask.heads, c.mask.channels, ctx.geometry)
        return Selection(mask, attn_bias=h.attn_bias, mlp_bias=c.mlp_bias)


def _build(spec: MethodSpec, _) -> Hybrid:
    pp, flap = ProbePruning(), Flap()
    return Hybrid(pp, flap) if spec.variant == "pp-heads" else Hybrid(flap, pp)


VARIANTS = {"pp-heads": "PP's heads, FLAP's MLP channels (each with its own biases)",
            "flap-heads": "FLAP's heads, PP's MLP channels"}
REGISTRATION = Registration("hybrid", _build, "an ablation: heads from one of pp/flap, channels from the other",
                            variants=VARIANTS)
