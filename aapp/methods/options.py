"""Options as typed data: a frozen dataclass per method (and one for the engine), filled from
`KEY=VALUE` text or a TOML/JSON table, checked against the class.

    @dataclass(frozen=True)
    class AAPPOptions:
        protect: float = option(0.3, "fraction of each layer's heads and channels protected on fire")

    parse_options(AAPPOptions, {"protect": "0.4"}, owner="aapp")   # AAPPOptions(protect=0.4)

A key the class lacks is an error that names the owner's options; a value that does not convert
to the field's type is an error that names the field. Errors name fields, never CLI flags: the
library does not know its command line.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aapp.errors import AappError, InputError, did_you_mean

HELP = "help"
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def option(default, help: str):
    """A dataclass field with one line of help (what `aapp methods` shows)."""
    return dataclasses.field(default=default, metadata={HELP: help})


@dataclass(frozen=True)
class OptionInfo:
    """One option as `aapp methods` lists it."""

    name: str
    type: str
    default: object
    help: str


def describe(cls: type | None) -> list[OptionInfo]:
    """The options of a dataclass, in declaration order (none for None)."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    return [OptionInfo(f.name, _type_name(hints[f.name]), f.default, f.metadata.get(HELP, ""))
            for f in dataclasses.fields(cls) if f.metadata.get(HELP) is not None]


def names(cls: type | None) -> list[str]:
    return [o.name for o in describe(cls)]


def parse_options(cls: type, raw: Mapping[str, object], owner: str):
    """An instance of `cls` with `raw`'s values (text or already typed) over its defaults."""
    known = {o.name for o in describe(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise AappError(unknown_option(key, owner, sorted(known)))
        values[key] = convert(value, hints[key], key)
    return cls(**values)


def unknown_option(key: str, owner: str, known: list[str]) -> str:
    takes = ", ".join(known) if known else "none"
    return f"{owner} has no option {key!r}{did_you_mean(key, known)}; its options: {takes}"


def convert(value: object, hint, key: str):
    """`value` as the type `hint` names (int, float, bool, str, or one of them | None)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except ValueError:
        pass
    else:
        raise AappError(f"option {key}: unsupported type {hint}")
    raise AappError(f"option {key}: expected {_type_name(hint)}, got {value!r}")


def parse_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """["protect=0.4", "gate=kl"] -> {"protect": "0.4", "gate": "kl"}; a key given twice is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InputError(f"option {pair!r}: expected KEY=VALUE, e.g. protect=0.4")
        if key in out:
            raise InputError(f"option {key} is given twice")
        out[key] = value.strip()
    return out


def collect_options(pairs: list[str] | tuple[str, ...] = (), path: str | Path | None = None) -> dict[str, object]:
    """Options from a file (`path`, TOML or JSON) and `KEY=VALUE` pairs, the pairs winning."""
    return {**(read_options_file(path) if path is not None else {}), **parse_pairs(pairs)}


def read_options_file(path: str | Path) -> dict[str, object]:
    """A flat table of options from a .toml or .json file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such options file")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise InputError(f"{path}: options files are .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid {path.suffix[1:].upper()} ({e})") from None
    if not isinstance(data, dict) or any(isinstance(v, (dict, list)) for v in data.values()):
        raise InputError(f"{path}: expected a flat table of KEY = VALUE options")
    return data


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    return "none" if hint is type(None) else getattr(hint, "__name__", str(hint))
