"""What a sweep is asked to do: `SweepConfig`, checked as it is made, and the parsers of its CLI values.

    SweepConfig(model="qwen2.5-coder-0.5b-instruct", calib="c.safetensors", methods=parse_methods("dense,pp,aapp"),
                ratios=parse_ratios("0.1,0.2,0.3"), harmful="advbench", benign="xstest-safe", out="runs/sweep")

Only what can be checked without files or a model is checked here; the rest is checked by
sweep_checks before anything is generated.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aapp.errors import AappError, InputError
from aapp.methods import Dense, check_method_spec, make_method, registration
from aapp.methods.aapp import AAPPOptions
from aapp.pruning.engine import PruneOptions

DENSE = Dense.name  # the reference cell runs the dense method, so it goes by that method's name


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; see aapp.evaluation.sweep. `prune.ratio` is ignored (set per cell)."""

    model: str
    out: str | Path
    calib: str | None = None
    methods: tuple[str, ...] = (DENSE, "pp", "aapp")
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    harmful: str | None = None
    benign: str | None = None
    limit: int | None = None      # per prompt set, as load_prompts
    sample: int | None = None
    seed: int = 0
    text: str | None = None       # perplexity on this text's held-out part ('builtin' or a file)
    ppl_seq_len: int = 256
    ppl_windows: int = 32
    max_new_tokens: int = 128
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # e.g. "auto": spread a large model over GPUs (single process only)
    judge: str = "keyword"
    prune: PruneOptions = field(default_factory=PruneOptions)
    aapp: AAPPOptions = field(default_factory=AAPPOptions)
    resume: bool = False
    truncate: bool = False  # cut prompts too long for the context instead of leaving them out

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "ratios", tuple(dict.fromkeys(float(r) for r in self.ratios)))
        if not self.methods:
            raise InputError("--methods: name at least one method")
        for m in self.methods:
            try:
                check_method_spec(m)
            except AappError as e:
                raise InputError(f"--methods: {e}") from None
        if any(m != DENSE for m in self.methods) and not self.ratios:
            raise InputError("--ratios: give at least one ratio for the pruned methods")
        bad = [r for r in self.ratios if not 0.0 < r < 1.0]
        if bad:
            raise InputError(f"--ratios: each must be in (0, 1), got {', '.join(f'{r:g}' for r in bad)}")
        if self.harmful is None and self.benign is None:
            raise InputError("a sweep needs prompts: give --harmful, --benign or both")
        for name in ("batch_size", "max_new_tokens", "ppl_windows"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ppl_seq_len < 2:
            raise InputError(f"ppl_seq_len must be at least 2, got {self.ppl_seq_len}")

    def method(self, name: str):
        """A fresh method for one of `methods`, with this sweep's AAPP options if it takes them."""
        return make_method(name, self.aapp if registration(name).options is AAPPOptions else None)

    def prune_settings(self) -> dict[str, Any]:
        """The pruning options every cell shares: all but the ratio, which each cell sets."""
        prune = asdict(self.prune)
        prune.pop("ratio")
        return prune


def sweep_options(methods: tuple[str, ...], options: dict[str, object]) -> tuple[PruneOptions, AAPPOptions]:
    """A sweep's options as the engine's and AAPP's, shared by every cell. Each key must be one a
    method of the sweep takes, and mean one thing for all (METHOD.KEY is refused: the cells share
    one set of engine options)."""
    from aapp.methods.options import parse_options
    from aapp.pruning.options import options_per_method

    if any("." in key for key in options):
        raise InputError("a sweep's options apply to every method that takes them; METHOD.KEY is not supported")
    per_method = options_per_method(methods, options)
    engine_keys = {f for f in PruneOptions.__dataclass_fields__ if f != "ratio"}
    engine = {k: v for k, v in options.items() if k in engine_keys}
    aapp = {k: v for k, v in options.items() if k not in engine_keys}
    taken = {k for opts in per_method.values() for k in opts}
    assert taken == set(options), (taken, options)  # options_per_method refused the rest
    return parse_options(PruneOptions, engine, "the engine"), parse_options(AAPPOptions, aapp, "aapp")


PPL_SIZE = re.compile(r":(\d+)x(\d+)$")


def parse_ppl(text: str | None) -> tuple[str | None, int, int]:
    """--ppl "builtin:8x256" -> ("builtin", 8, 256); "prose.txt" -> ("prose.txt", 32, 256); None -> no perplexity."""
    windows, seq_len = SweepConfig.ppl_windows, SweepConfig.ppl_seq_len
    if text is None:
        return None, windows, seq_len
    size = PPL_SIZE.search(text)
    if size:
        text, windows, seq_len = text[: size.start()], int(size[1]), int(size[2])
    if not text:
        raise InputError("--ppl: name the text ('builtin' or a file) before :WINDOWSxLEN")
    return text, windows, seq_len


def parse_methods(text: str) -> tuple[str, ...]:
    """--methods "dense,pp,aapp" -> ("dense", "pp", "aapp"); names are checked by SweepConfig."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_ratios(text: str) -> tuple[float, ...]:
    """--ratios "0.1,0.2" -> (0.1, 0.2); ranges are checked by SweepConfig."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--ratios {text!r}: expected comma-separated numbers, e.g. 0.1,0.2,0.3") from None


def split_sets(specs: str | None) -> list[str]:
    """--harmful 'advbench,harmbench' -> ['advbench', 'harmbench']; None -> []."""
    return [part.strip() for part in (specs or "").split(",") if part.strip()]
