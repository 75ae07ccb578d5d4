"""What a sweep is asked to do, in small pieces that each step takes only what it uses of.

    SweepConfig(model=ModelSettings("qwen2.5-coder-0.5b-instruct"), out="runs/sweep",
                prompts=PromptSettings(harmful="advbench:100,harmbench:100", benign="xstest-safe"),
                cells=CellSettings(methods=parse_methods("dense,pp,aapp"), ratios=parse_ratios("0.3,0.4"),
                                   calib="c.safetensors"))

* ModelSettings: which model, loaded how (the model step);
* PromptSettings: which prompt sets, drawn how (the prompt step);
* CellSettings: the method x ratio grid and the options (`--opt KEY=VALUE`) every cell's method
  and engine are built from, each method taking the keys it has (aapp.methods.build);
* GenerationSettings (aapp.pruning.run): new tokens, batch size, sorting by length;
* PerplexitySettings: held-out prose perplexity per method x ratio (optional).

Only what can be checked without files or a model is checked here; the rest is checked by
sweep_checks before anything is generated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aapp.errors import AappError, InputError, did_you_mean
from aapp.evaluation.metrics import DEFAULT_MIX
from aapp.methods import Dense, check_method_spec, make_method
from aapp.pruning.engine import PruneOptions
from aapp.methods.build import build_method, engine_options, method_options, options_per_method
from aapp.pruning.run import GenerationSettings

DENSE = Dense.name  # the reference cell runs the dense method, so it goes by that method's name


@dataclass(frozen=True)
class ModelSettings:
    model: str
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # e.g. "auto": spread a large model over GPUs (single process only)


@dataclass(frozen=True)
class PromptSet:
    """One prompt set of a sweep: a built-in name or a file, with the number to draw from it."""

    spec: str
    label: str               # harmful | benign
    sample: int | None = None


@dataclass(frozen=True)
class PromptSettings:
    harmful: str | None = None  # sets, comma-separated; `NAME:N` draws N from that set
    benign: str | None = None
    limit: int | None = None    # per prompt set, as load_prompts
    sample: int | None = None   # per prompt set, unless the set names its own N
    seed: int = 0
    truncate: bool = False      # cut prompts too long for the context instead of leaving them out

    def __post_init__(self):
        if self.harmful is None and self.benign is None:
            raise InputError("a sweep needs prompts: give harmful, benign or both")
        self.sets()  # checks the `NAME:N` counts

    def sets(self) -> list[PromptSet]:
        """Harmful sets, then benign ones, in the order given."""
        return [PromptSet(spec, label, n if n is not None else self.sample)
                for specs, label in ((self.harmful, "harmful"), (self.benign, "benign"))
                for spec, n in map(_split_count, split_sets(specs))]


@dataclass(frozen=True)
class CellSettings:
    methods: tuple[str, ...] = (DENSE, "pp", "aapp")
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    calib: str | None = None
    # KEY -> value for every method of the sweep that takes KEY (METHOD.KEY: that method alone),
    # the engine's options among them; a key no method takes is refused.
    options: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "ratios", tuple(dict.fromkeys(float(r) for r in self.ratios)))
        if not self.methods:
            raise InputError("methods: name at least one method")
        for m in self.methods:
            try:
                check_method_spec(m)
            except AappError as e:
                raise InputError(f"methods: {e}") from None
        if any(m != DENSE for m in self.methods) and not self.ratios:
            raise InputError("ratios: give at least one ratio for the pruned methods")
        bad = [r for r in self.ratios if not 0.0 < r < 1.0]
        if bad:
            raise InputError(f"ratios: each must be in (0, 1), got {', '.join(f'{r:g}' for r in bad)}")
        self._check_names()
        for m in self.methods:  # every option must apply to some method, and parse for each that takes it
            self.prune_options(m, None)

    def _check_names(self) -> None:
        """A key no method of the sweep takes is an error that says which one was likely meant."""
        specs = (*self.methods, DENSE)
        for key in self.options:
            target, dot, name = key.rpartition(".")
            mine = [s for s in specs if not dot or target in (s, check_method_spec(s).name)]
            if dot and not mine:
                raise InputError(f"option {key!r} names method {target!r}, which the sweep does not run"
                                 f"{did_you_mean(target, self.methods)}; it runs {', '.join(self.methods)}")
            known = {o.name for s in mine for m in [make_method(s)] for o in method_options(m) + engine_options(m)}
            if name not in known:
                hint = did_you_mean(name, sorted(known))
                if dot and hint:
                    hint = hint.replace(" '", f" '{target}.")
                raise InputError(f"no method of {', '.join(self.methods)} takes option {key!r}{hint}; "
                                 "`aapp methods` lists them")

    def _build(self, name: str, ratio: float | None):
        per_method = options_per_method((*self.methods, DENSE), self.options)
        return build_method(name, per_method.get(name, {}), None if name == DENSE else ratio)

    def method(self, name: str):
        """A fresh method for one of `methods`, with the options it takes."""
        return self._build(name, None)[0]

    def prune_options(self, name: str, ratio: float | None) -> PruneOptions:
        """The engine options of `name` at `ratio` (the dense reference's: ratio 0, the defaults)."""
        return self._build(name, ratio)[1]

    def settings(self, name: str) -> dict[str, Any]:
        """What the cells of method `name` are built from, bar the ratio: part of each cell's identity.
        Only the options `name` takes, so a cell is reused by a sweep that adds another method's options."""
        mine = options_per_method((*self.methods, DENSE), self.options).get(name, {})
        return {"options": {k: mine[k] for k in sorted(mine)}}


@dataclass(frozen=True)
class PerplexitySettings:
    text: str                 # 'builtin' or a file: perplexity on its held-out part
    seq_len: int = 256
    windows: int = 32

    def __post_init__(self):
        if self.windows < 1:
            raise InputError(f"ppl_windows must be at least 1, got {self.windows}")
        if self.seq_len < 2:
            raise InputError(f"ppl_seq_len must be at least 2, got {self.seq_len}")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; see aapp.evaluation.sweep."""

    model: ModelSettings
    out: str | Path
    prompts: PromptSettings
    cells: CellSettings = field(default_factory=CellSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    perplexity: PerplexitySettings | None = None
    judge: str = "keyword"
    resume: bool = False
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))  # the traffic average FLOPs are reported over

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self.generation, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self.generation, name)}")


def sweep_config(model: str, out: str | Path, *, methods: str = "dense,pp,aapp", ratios: str = "0.1,0.2,0.3,0.4",
                 calib: str | None = None, opt: Sequence[str] = (), opts: str | None = None,
                 harmful: str | None = None, benign: str | None = None, sample: int | None = None, seed: int = 0,
                 truncate: bool = False, max_new_tokens: int = 128, batch_size: int = 8, ppl: str | None = None,
                 judge: str = "keyword", mix: Mapping[str, float] = DEFAULT_MIX, device: str = "auto",
                 dtype: str = "auto") -> SweepConfig:
    """The sweep `aapp eval-refusal --model` asks for, from its options as given (methods, ratios and
    ppl as text, `opt` as KEY=VALUE strings, `device` possibly map:STRATEGY). Its batches hold prompts of
    similar length, and it resumes: cells in `out` made with the same settings are reused."""
    from aapp.methods.options import collect_options
    from aapp.models.loading import split_device

    dev, device_map = split_device(device)
    text, windows, seq_len = parse_ppl(ppl)
    return SweepConfig(
        model=ModelSettings(model, device=dev, dtype=dtype, device_map=device_map), out=out,
        cells=CellSettings(methods=parse_methods(methods), ratios=parse_ratios(ratios), calib=calib,
                           options=collect_options(opt, opts)),
        prompts=PromptSettings(harmful=harmful, benign=benign, sample=sample, seed=seed, truncate=truncate),
        generation=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, sort_by_length=True),
        perplexity=PerplexitySettings(text, seq_len=seq_len, windows=windows) if text else None,
        judge=judge, resume=True, mix=dict(mix))


PPL_SIZE = re.compile(r":(\d+)x(\d+)$")


def parse_ppl(text: str | None) -> tuple[str | None, int, int]:
    """--ppl "builtin:8x256" -> ("builtin", 8, 256); "prose.txt" -> ("prose.txt", 32, 256); None -> no perplexity."""
    windows, seq_len = PerplexitySettings.windows, PerplexitySettings.seq_len
    if text is None:
        return None, windows, seq_len
    size = PPL_SIZE.search(text)
    if size:
        text, windows, seq_len = text[: size.start()], int(size[1]), int(size[2])
    if not text:
        raise InputError("ppl: name the text ('builtin' or a file) before :WINDOWSxLEN")
    return text, windows, seq_len


def parse_methods(text: str) -> tuple[str, ...]:
    """--methods "dense,pp,aapp" -> ("dense", "pp", "aapp"); names are checked by CellSettings."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_ratios(text: str) -> tuple[float, ...]:
    """--ratios "0.1,0.2" -> (0.1, 0.2); ranges are checked by CellSettings."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"ratios {text!r}: expected comma-separated numbers, e.g. 0.1,0.2,0.3") from None


def split_sets(specs: str | None) -> list[str]:
    """--harmful 'advbench,harmbench' -> ['advbench', 'harmbench']; None -> []."""
    return [part.strip() for part in (specs or "").split(",") if part.strip()]


def _split_count(spec: str) -> tuple[str, int | None]:
    """'advbench:100' -> ('advbench', 100); a spec without a numeric `:N` suffix is left whole."""
    name, _, count = spec.rpartition(":")
    if not name or not count.strip().isdigit():
        return spec, None
    if int(count) < 1:
        raise InputError(f"prompt set {spec!r}: draw at least 1 prompt")
    return name, int(count)
