"""Methods by the name the CLI uses: one registry, one spec grammar.

A spec is `NAME`, `NAME:VARIANT` (a variant the method registers, e.g. `aapp:kl` for AAPP with
that risk gate, `pp:history-only` for an ablation) and, for methods that take it, a `+comp`
suffix (`pp+comp`, `aapp:kl+comp`) that adds back the pruned channels' calibration-mean output
(the reference PP code's `bias` option). The spec is the method's name in output rows, so one
sweep can compare variants side by side. Each method module registers itself in
aapp.methods.__init__ through `register`, the same way an extension would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aapp.errors import AappError
from aapp.methods.base import Method

COMPENSATE = "+comp"


@dataclass(frozen=True)
class MethodSpec:
    text: str
    name: str
    variant: str | None
    compensate: bool

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        """'aapp:kl+comp' -> name 'aapp', variant 'kl', compensate True."""
        compensate = text.endswith(COMPENSATE)
        name, colon, variant = text.removesuffix(COMPENSATE).partition(":")
        return cls(text, name, variant if colon else None, compensate)


@dataclass(frozen=True)
class Registration:
    """How to build one method from a spec. `build(spec, aapp_options)` gets a checked spec."""

    name: str
    build: Callable[[MethodSpec, object], Method]
    summary: str
    variants: dict[str, str] | None = None  # variant -> what it changes
    compensable: bool = False
    compensation_note: str = ""            # said when `+comp` is refused


_REGISTRY: dict[str, Registration] = {}


def register(reg: Registration) -> None:
    if reg.name in _REGISTRY:
        raise ValueError(f"method {reg.name!r} is registered twice")
    _REGISTRY[reg.name] = reg


def registered() -> dict[str, Registration]:
    """Every registered method by name, in registration order."""
    return dict(_REGISTRY)


def _variant_specs() -> str:
    return ", ".join(f"{r.name}:{v}" for r in _REGISTRY.values() for v in (r.variants or {}))


def check_method_spec(text: str) -> MethodSpec:
    """The parsed spec, or AappError saying what the registry takes."""
    spec = MethodSpec.parse(text)
    reg = _REGISTRY.get(spec.name)
    if reg is None:
        raise AappError(f"unknown method {text!r}; choose one of {', '.join(_REGISTRY)}, a variant "
                        f"({_variant_specs()}), or add {COMPENSATE} to "
                        f"{' or '.join(r.name for r in _REGISTRY.values() if r.compensable)}")
    if spec.variant is not None and spec.variant not in (reg.variants or {}):
        takes = ", ".join(f"{reg.name}:{v}" for v in reg.variants) if reg.variants else "none"
        raise AappError(f"unknown method variant {text!r}: {reg.name} takes {takes}")
    if spec.compensate and not reg.compensable:
        raise AappError(f"{text!r}: only {' and '.join(r.name for r in _REGISTRY.values() if r.compensable)} "
                        f"take {COMPENSATE}" + (f" ({reg.compensation_note})" if reg.compensation_note else ""))
    return spec


def make_method(text: str, aapp_options=None) -> Method:
    """A fresh method instance by spec; AAPP takes its options (a spec's gate overrides theirs)."""
    spec = check_method_spec(text)
    method = _REGISTRY[spec.name].build(spec, aapp_options)
    method.name = text
    return method
