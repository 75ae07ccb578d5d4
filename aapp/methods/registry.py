"""Methods by the name the CLI uses: one registry, one spec grammar.

A spec is `NAME`, `NAME:VARIANT` (a variant the method registers, e.g. `aapp:kl` for AAPP with
that risk gate, `pp:history-only` for an ablation) and, for methods that take it, a `+comp`
suffix (`pp+comp`, `aapp:kl+comp`) that adds back the pruned channels' calibration-mean output
(the reference PP code's `bias` option). The spec is the method's name in output rows, so one
sweep can compare variants side by side. Each method module registers itself in
aapp.methods.__init__ through `register`, the same way an extension would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from rich.progress import Progress

from aapp.calibration.run import TextSettings
from aapp.calibration.store import Calibration
from aapp.errors import AappError, did_you_mean
from aapp.methods.base import Method
from aapp.methods.options import parse_options
from aapp.methods.report import MethodFacts, RowReport
from aapp.models.loading import LoadedModel

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


# The engine's pruned prefill, for a step that fits on pruned features: (ratio, dense_layers) -> a
# context inside which the loaded model runs Probe Pruning's prefill at that plan.
PrunedPrefill = Callable[[float, int], AbstractContextManager]


@dataclass(frozen=True)
class StepContext:
    """What the calibration entry point (aapp.pruning.calibrate) hands a method's calibration step."""

    calib: Calibration
    loaded: LoadedModel
    prefill: PrunedPrefill
    bar: Progress
    prose: Sequence[str] = ()        # the general text (calibration half), when calibrating anew
    text: TextSettings = TextSettings()


@dataclass(frozen=True)
class CalibrationStep:
    """A method's own calibration beyond the general history; it writes its own section of the file.
    `prepare(settings, existing)` loads its inputs before any model loads (`existing`: the file an
    update adds to); `run(ctx, prepared)` and `update(ctx, prepared)` fill `ctx.calib` and say what
    they did in a few words. `settings` is its frozen settings class."""

    section: str
    settings: type
    prepare: Callable[[object, Calibration | None], object]
    run: Callable[[StepContext, object], str]
    update: Callable[[StepContext, object], str]


@dataclass(frozen=True)
class Registration:
    """How to build one method from a spec. `build(spec, options)` gets a checked spec and an
    instance of `options` (the method's own frozen options class; None for a method without)."""

    name: str
    build: Callable[[MethodSpec, object], Method]
    summary: str
    variants: dict[str, str] | None = None  # variant -> what it changes
    compensable: bool = False
    compensation_note: str = ""            # said when `+comp` is refused
    options: type | None = None            # a frozen dataclass of `option(...)` fields (aapp.methods.options)
    calibration: CalibrationStep | None = None  # what it calibrates beyond the general history
    facts: type[MethodFacts] | None = None  # the facts its rows carry of their run (aapp.methods.report)
    presets: Mapping[str, Mapping[str, object]] | None = None  # variant -> the options it sets (one table)


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
        raise AappError(f"unknown method {text!r}{did_you_mean(spec.name, _REGISTRY)}; choose one of {', '.join(_REGISTRY)}, a variant "
                        f"({_variant_specs()}), or add {COMPENSATE} to "
                        f"{' or '.join(r.name for r in _REGISTRY.values() if r.compensable)}")
    if spec.variant is not None and spec.variant not in (reg.variants or {}):
        takes = ", ".join(f"{reg.name}:{v}" for v in reg.variants) if reg.variants else "none"
        raise AappError(f"unknown method variant {text!r}: {reg.name} takes {takes}")
    if spec.compensate and not reg.compensable:
        raise AappError(f"{text!r}: only {' and '.join(r.name for r in _REGISTRY.values() if r.compensable)} "
                        f"take {COMPENSATE}" + (f" ({reg.compensation_note})" if reg.compensation_note else ""))
    return spec


def facts_types() -> list[type[MethodFacts]]:
    """The facts types of the registered methods (the row fields a method of its own may add)."""
    return [r.facts for r in _REGISTRY.values() if r.facts is not None]


def _with_preset(reg: Registration, spec: MethodSpec, options, given: set[str]):
    """`options` with the spec's variant preset applied. An option given (`given`), or set away from its
    default in an options object, that differs from the preset is an error: a variant never wins in silence."""
    preset = (reg.presets or {}).get(spec.variant, {})
    defaults = reg.options()
    for key, value in preset.items():
        ours = getattr(options, key)
        if ours != value and (key in given or ours != getattr(defaults, key)):
            raise AappError(f"{spec.text} sets {key}={value}, but its options set {key}={ours}; "
                            f"give one of them (or {spec.name} with {key}={ours})")
    return replace(options, **preset) if preset else options


def read_row_report(row: Mapping, where: str = "row") -> RowReport:
    """What a row written by `aapp prune` (or a sweep, or read back from a file) records of its run,
    with the facts of whichever registered method wrote them; malformed fields are one line naming them."""
    return RowReport.from_json(row, facts_types(), where)


def registration(text: str) -> Registration:
    """The registration of a spec's method (the spec is checked)."""
    return _REGISTRY[check_method_spec(text).name]


def make_method(text: str, options: Mapping[str, object] | object | None = None) -> Method:
    """A fresh method instance by spec. `options` are the method's own: an instance of its
    options class, or a mapping of field names to values (text or typed) over its defaults."""
    spec = check_method_spec(text)
    reg = _REGISTRY[spec.name]
    if reg.options is None:
        if options:
            keys = ", ".join(options) if isinstance(options, Mapping) else type(options).__name__
            raise AappError(f"{spec.name} takes no method options (got {keys})")
        built = None
    elif isinstance(options, reg.options):
        built = _with_preset(reg, spec, options, set())
    elif options is None or isinstance(options, Mapping):
        given = parse_options(reg.options, options or {}, spec.name)
        built = _with_preset(reg, spec, given, set(options or {}))
    else:
        raise AappError(f"{spec.name}'s options are {reg.options.__name__}, not {type(options).__name__}")
    method = reg.build(spec, built)
    method.name = text
    return method
