"""`aapp prune` as one request and one call: prompts in, pruned generations out.

    prune(PruneRequest(model="qwen2.5-coder-0.5b-instruct", method=MethodChoice("pp", {}, 0.3, "calib.st"),
                       prompts="advbench", out="pp.jsonl"))

The CLI parses its flags into a `PruneRequest` and calls `prune`; `aapp serve` builds its method from
the same `MethodChoice` (`resolve_method`), so a method, its options and its calibration are checked
alike wherever they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aapp.calibration.store import Calibration, load_calibration
from aapp.context import fit_to_context
from aapp.errors import CalibrationError
from aapp.methods.base import Method
from aapp.methods.build import build_method
from aapp.methods.engine_options import PruneOptions
from aapp.methods.plan import check_ratio
from aapp.models.loading import load_model, peek_num_layers, split_device
from aapp.prompts import load_prompts
from aapp.pruning.resume import prune_to
from aapp.pruning.run import GenerationSettings


@dataclass(frozen=True)
class MethodChoice:
    """A method as a user names it: its spec, its options (its own and the engine's, as text or typed
    values by key), the ratio (None: the method's default) and the calibration file, if any."""

    spec: str
    options: Mapping[str, object] = field(default_factory=dict)
    ratio: float | None = None
    calib: str | None = None


@dataclass(frozen=True)
class ResolvedMethod:
    method: Method
    options: PruneOptions
    calib: Calibration | None


def resolve_method(choice: MethodChoice, model: str) -> ResolvedMethod:
    """The method, its engine options and its calibration, checked before the model loads: options it
    lacks, a ratio its plan cannot reach on `model`, a calibration it needs and lacks or cannot read."""
    method, options = build_method(choice.spec, choice.options, choice.ratio)
    method.check_calibration(choice.calib)
    if not method.needs_calibration and choice.calib is not None:
        raise CalibrationError(f"method {choice.spec} reads no calibration file, so calib does not apply")
    if method.prunes:  # from the model's config alone: the largest ratio its plan allows
        check_ratio(options.ratio, peek_num_layers(model), options.dense_layers)
    calib = load_calibration(choice.calib) if choice.calib else None
    return ResolvedMethod(method, options, calib)


@dataclass(frozen=True)
class PruneRequest:
    """Everything `aapp prune` is asked to do."""

    model: str
    method: MethodChoice
    prompts: str | None = None  # a .jsonl/.csv/.txt path, a built-in set, or None (stdin)
    out: str | None = None      # a JSONL path, or None (stdout)
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    generation: GenerationSettings = GenerationSettings()
    truncate: bool = False
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"


def prune(request: PruneRequest, on_start: Callable[[str, int], None] = lambda name, total: None,
          on_batch: Callable[[int], None] | None = None) -> None:
    """Generate every prompt's row of `request` into its out (stdout when None). `on_start(name, total)`
    is called once the prompts are known, `on_batch(n)` as rows finish."""
    resolved = resolve_method(request.method, request.model)
    dev, device_map = split_device(request.device)
    prompts = load_prompts(request.prompts, limit=request.limit, sample=request.sample, seed=request.seed)
    loaded = load_model(request.model, device=dev, dtype=request.dtype, device_map=device_map)
    prompts = fit_to_context(prompts, loaded.tokenizer, loaded.geometry.context_length,
                             request.generation.max_new_tokens, request.truncate)
    on_start(f"{request.method.spec} r={resolved.options.ratio}", len(prompts))
    prune_to(request.out, loaded, prompts, resolved.method, resolved.options, resolved.calib, request.generation,
             resume=request.resume, on_batch=on_batch)
