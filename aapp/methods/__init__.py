"""Pruning methods, by the name the CLI uses.

A method spec is a name, or `aapp:GATE` for AAPP with that risk gate (e.g. `aapp:kl`), and
the dynamic methods take a `+comp` suffix (`pp+comp`, `aapp:kl+comp`) that adds back the
pruned channels' calibration-mean output (the reference PP code's `bias` option), so one sweep
can compare variants side by side; the spec is the method's name in output rows.
"""

from __future__ import annotations

from dataclasses import replace

from aapp.errors import AappError
from aapp.methods.aapp import AAPP, GATES, AAPPOptions
from aapp.methods.base import LayerContext, Method, Selection
from aapp.methods.pp import PPOptions, ProbePruning
from aapp.methods.static import Flap, WandaSP
from aapp.pruning.masks import LayerMask

__all__ = [
    "AAPP",
    "METHODS",
    "AAPPOptions",
    "Dense",
    "Flap",
    "LayerContext",
    "Method",
    "PPOptions",
    "ProbePruning",
    "Selection",
    "WandaSP",
    "base_name",
    "check_method_spec",
    "make_method",
]


class Dense(Method):
    """No pruning; runs through the engine only so FLOPs are counted the same way."""

    name = "dense"
    needs_calibration = False

    def select(self, ctx: LayerContext) -> Selection:
        return Selection(LayerMask.full(ctx.geometry, ctx.residual.device))


METHODS: dict[str, type[Method]] = {m.name: m for m in (Dense, ProbePruning, WandaSP, Flap, AAPP)}


COMPENSATE = "+comp"
_COMPENSABLE = ("pp", "aapp")  # flap always compensates; the others are static scores without it


def _split_spec(spec: str) -> tuple[str, str, bool]:
    """'aapp:kl+comp' -> ('aapp', 'kl', True)."""
    compensate = spec.endswith(COMPENSATE)
    base, _, variant = spec.removesuffix(COMPENSATE).partition(":")
    return base, variant, compensate


def base_name(spec: str) -> str:
    """'aapp:kl+comp' -> 'aapp'; plain names are their own base."""
    return _split_spec(spec)[0]


def check_method_spec(spec: str) -> None:
    """Raise AappError unless `spec` names a method, with an aapp gate and `+comp` where allowed."""
    base, variant, compensate = _split_spec(spec)
    if base not in METHODS:
        raise AappError(f"unknown method {spec!r}; choose one of {', '.join(METHODS)} "
                        f"(or aapp:GATE with GATE one of {', '.join(GATES)}; pp and aapp take {COMPENSATE})")
    if ":" in spec and (base != "aapp" or variant not in GATES):
        raise AappError(f"unknown method variant {spec!r}: only aapp takes one, a gate "
                        f"({', '.join('aapp:' + g for g in GATES)})")
    if compensate and base not in _COMPENSABLE:
        raise AappError(f"{spec!r}: only {' and '.join(_COMPENSABLE)} take {COMPENSATE}"
                        + (" (flap always compensates)" if base == "flap" else ""))


def make_method(spec: str, aapp_options: AAPPOptions | None = None) -> Method:
    """A fresh method instance by spec; AAPP takes its options (a spec's gate overrides theirs)."""
    check_method_spec(spec)
    base, gate, compensate = _split_spec(spec)
    pp = PPOptions(compensate=compensate)
    if base == "aapp":
        options = aapp_options or AAPPOptions()
        method = AAPP(replace(options, gate=gate) if gate else options, pp)
    elif base == "pp":
        method = ProbePruning(pp)
    else:
        return METHODS[base]()
    method.name = spec
    return method
