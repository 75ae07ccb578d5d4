"""Which options a method takes, checked in one place: its own (the registration's options class)
and the engine's that it declares (Method.engine_options, of aapp.methods.engine_options' groups).

    method, options = build_method("aapp:kl", {"protect": "0.4", "dense_layers": "2"}, ratio=0.3)

An option a method lacks is an error that names the options it takes, so nothing given is
silently ignored; the dense reference takes none, and no ratio. A variant is a named preset of a
method's options (Registration.presets); an option given against its preset is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aapp.errors import AappError
from aapp.methods.base import Method
from aapp.methods.engine_options import PruneOptions
from aapp.methods.options import OptionInfo, describe, parse_options, unknown_option
from aapp.methods.plan import check_ratio
from aapp.methods.registry import check_method_spec, make_method, registered, registration

DEFAULT_RATIO = 0.3


def engine_options(method: Method) -> list[OptionInfo]:
    """The engine's options that apply to `method`, as it declares them."""
    declared = set(method.engine_options)
    return [o for o in describe(PruneOptions) if o.name in declared]


def method_options(method: Method) -> list[OptionInfo]:
    """The method's own options."""
    return describe(registration(method.name).options)


def build_method(spec: str, options: Mapping[str, object] | None = None,
                 ratio: float | None = None) -> tuple[Method, PruneOptions]:
    """The method a spec names with its own options, and the engine options for it at `ratio`
    (None: DEFAULT_RATIO for a pruning method, 0 for the dense reference)."""
    options = dict(options or {})
    method = make_method(spec)  # with defaults, to learn which options apply
    own = {o.name for o in method_options(method)}
    engine = {o.name for o in engine_options(method)}
    for key in options:
        if key not in own | engine:
            raise AappError(unknown_option(key, spec, sorted(own | engine)))
    if not method.prunes and ratio is not None and ratio != 0:
        raise AappError(f"{spec} prunes nothing, so it takes no ratio (got {ratio:g})")
    if ratio is None:
        ratio = DEFAULT_RATIO if method.prunes else 0.0
    check_ratio(ratio)
    method = make_method(spec, {k: v for k, v in options.items() if k in own})
    prune = parse_options(PruneOptions, {k: v for k, v in options.items() if k in engine}, spec)
    return method, PruneOptions(**{**_fields(prune), "ratio": ratio})


def options_per_method(specs: Sequence[str], options: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """A sweep's options split over its methods: each method gets the keys it takes (`KEY`), or
    that name it (`METHOD.KEY`, METHOD a spec or a method's name); a key no method takes is an error."""
    out: dict[str, dict[str, object]] = {s: {} for s in specs}
    for key, value in options.items():
        target, dot, name = key.rpartition(".")
        takers = []
        for spec in specs:
            if dot and target not in (spec, check_method_spec(spec).name):
                continue
            method = make_method(spec)
            if (name if dot else key) in {o.name for o in method_options(method) + engine_options(method)}:
                takers.append(spec)
        if not takers:
            raise AappError(f"no method of {', '.join(specs)} takes option {key!r} (`aapp methods` lists them)")
        for spec in takers:
            out[spec][name if dot else key] = value
    return out


@dataclass(frozen=True)
class MethodInfo:
    """One method as `aapp methods` lists it."""

    name: str
    summary: str
    variants: dict[str, str]
    compensable: bool
    options: list[OptionInfo]         # its own
    engine_options: list[OptionInfo]  # the engine's that apply to it


def list_methods() -> list[MethodInfo]:
    out = []
    for name, reg in registered().items():
        method = make_method(name)
        out.append(MethodInfo(name, reg.summary, dict(reg.variants or {}), reg.compensable,
                              method_options(method), engine_options(method)))
    return out


def _fields(options: PruneOptions) -> dict:
    return {name: getattr(options, name) for name in PruneOptions.__dataclass_fields__}
