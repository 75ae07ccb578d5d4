"""Heads from one method and MLP channels from another: an ablation that shows which half of a
method its result comes from (e.g. PP's heads with FLAP's channels)."""

from __future__ import annotations

from dataclasses import replace

from aapp.errors import AappError
from aapp.methods.base import Batch, LayerContext, Method, Router, Selection
from aapp.methods.masks import LayerMask
from aapp.methods.pp import ProbePruning
from aapp.methods.registry import MethodSpec, Registration
from aapp.methods.static import Flap


class Hybrid(Method):
    """Heads from `heads_from`, channels from `channels_from`. It forwards every hook of the Method
    protocol to both (tests/methods/test_hybrid.py fails when a hook is added and not forwarded); each
    keeps its own per-batch state, side by side in the hybrid's."""

    name = "hybrid"

    def __init__(self, heads_from: Method, channels_from: Method):
        self.heads_from, self.channels_from = heads_from, channels_from

    @property
    def parts(self) -> tuple[Method, Method]:
        return self.heads_from, self.channels_from

    @property
    def uses_probe(self) -> bool:
        return any([m.uses_probe for m in self.parts])

    @property
    def carries_state(self) -> bool:
        return any([m.carries_state for m in self.parts])

    @property
    def engine_options(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for m in self.parts for name in m.engine_options))

    def settings(self) -> dict[str, object]:
        return {f"{side}.{k}": v for side, m in zip(("heads_from", "channels_from"), self.parts)
                for k, v in m.settings().items()}

    def check_calibration(self, calib) -> None:
        for m in self.parts:
            m.check_calibration(calib)

    def bind(self, *args) -> None:
        super().bind(*args)
        for m in self.parts:
            m.bind(*args)

    def router(self) -> Router | None:
        routers = [r for r in (m.router() for m in self.parts) if r is not None]
        if len(routers) > 1:
            raise AappError("a hybrid of two routing methods has two routers; give it one")
        return routers[0] if routers else None

    def new_state(self) -> tuple:
        return tuple(m.new_state() for m in self.parts)

    def watch_layers(self) -> set[int]:
        return set().union(*(m.watch_layers() for m in self.parts))

    def observe(self, layer: int, x, token_mask, batch: Batch) -> None:
        for k, m in enumerate(self.parts):
            if layer in m.watch_layers():
                m.observe(layer, x, token_mask, _side(batch, k))

    def select(self, ctx: LayerContext) -> Selection:
        h = self.heads_from.select(replace(ctx, batch=_side(ctx.batch, 0)))
        c = self.channels_from.select(replace(ctx, batch=_side(ctx.batch, 1)))
        mask = LayerMask.from_kept(h.mask.heads, c.mask.channels, ctx.geometry)
        return Selection(mask, attn_bias=h.attn_bias, mlp_bias=c.mlp_bias)

    def facts(self, batch: Batch, rows: int) -> list:
        """The facts of whichever side has them (the heads' side first)."""
        sides = [m.facts(_side(batch, k), rows) for k, m in enumerate(self.parts)]
        return [next((f for f in row if f is not None), None) for row in zip(*sides)]


def _side(batch: Batch, k: int) -> Batch:
    """The batch as side `k` of a hybrid sees it: with its own state."""
    return replace(batch, state=batch.state[k] if batch.state is not None else None)


def _build(spec: MethodSpec, _) -> Hybrid:
    pp, flap = ProbePruning(), Flap()
    return Hybrid(pp, flap) if spec.variant == "pp-heads" else Hybrid(flap, pp)


VARIANTS = {"pp-heads": "PP's heads, FLAP's MLP channels (each with its own biases)",
            "flap-heads": "FLAP's heads, PP's MLP channels"}
REGISTRATION = Registration("hybrid", _build, "an ablation: heads from one of pp/flap, channels from the other",
                            variants=VARIANTS)
