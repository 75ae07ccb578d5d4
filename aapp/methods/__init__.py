"""Pruning methods, by the name the CLI uses."""

from __future__ import annotations

from aapp.errors import AappError
from aapp.methods.aapp import AAPP, AAPPOptions
from aapp.methods.base import LayerContext, Method, Selection
from aapp.methods.pp import PPOptions, ProbePruning
from aapp.methods.static import Flap, WandaSP
from aapp.pruning.masks import LayerMask


__all__ = ["AAPP", "AAPPOptions", "Dense", "Flap", "LayerContext", "METHODS", "Method", "PPOptions",
           "ProbePruning", "Selection", "WandaSP", "make_method", "method_names"]


class Dense(Method):
    """No pruning; runs through the engine only so FLOPs are counted the same way."""

    name = "dense"
    needs_calibration = False

    def select(self, ctx: LayerContext) -> Selection:
        return Selection(LayerMask.full(ctx.geometry, ctx.residual.device))


METHODS: dict[str, type[Method]] = {m.name: m for m in (Dense, ProbePruning, WandaSP, Flap, AAPP)}


def method_names() -> list[str]:
    return list(METHODS)


def make_method(name: str, aapp_options: AAPPOptions | None = None) -> Method:
    """A fresh method instance by CLI name; AAPP takes its options, the others have none."""
    if name not in METHODS:
        raise AappError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if name == "aapp":
        return AAPP(aapp_options or AAPPOptions())
    return METHODS[name]()
