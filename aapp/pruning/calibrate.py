"""`aapp calibrate` as one call: the dense general-text pass that every method's history comes
from, then each method's own calibration step (AAPP's alignment section), which may ask the
engine for Probe Pruning's prefill at a ratio; or, with `update`, only the methods' updates to
an existing file of the same model. The file is written once, atomically, at the end.

A step's prepared value may offer `observe_text(loaded)`, a context manager entered around the
general-text pass, to read what it needs from those forwards rather than run them again (AAPP
takes its prose windows' gate features there: the same windows).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.calibration.store import Calibration, load_calibration, save_calibration
from aapp.console import progress
from aapp.errors import InputError
from aapp.io import check_writable
from aapp.methods import registered
from aapp.methods.pp import ProbePruning
from aapp.methods.registry import PrunedPrefill, StepContext
from aapp.models.loading import LoadedModel, load_model, split_device
from aapp.pruning.engine import PruneOptions, prune_model


@dataclass(frozen=True)
class CalibrateRequest:
    """What to calibrate: the model, the general text (`text`: 'builtin' or a file), and for each
    method whose calibration step should run, its settings (the fields of the step's settings
    class) by method name; a method left out is not calibrated."""

    model: str
    out: str
    text: str = "builtin"
    text_settings: TextSettings = TextSettings()
    steps: dict[str, Mapping[str, object]] = field(default_factory=dict)
    update: bool = False
    device: str = "auto"
    dtype: str = "auto"


def pp_prefill(loaded: LoadedModel, calib: Calibration) -> PrunedPrefill:
    """Probe Pruning's prefill at a ratio and dense layers, as `aapp prune` would run it."""
    return lambda ratio, dense_layers: prune_model(loaded, ProbePruning(),
                                                   PruneOptions(ratio=ratio, dense_layers=dense_layers), calib)


def calibrate(request: CalibrateRequest) -> str:
    """Write `request.out`; returns one line saying what it holds."""
    steps = registered()
    settings = {}
    for name, values in request.steps.items():
        step = steps[name].calibration if name in steps else None
        if step is None:
            raise InputError(f"method {name!r} has no calibration step")
        settings[name] = step.settings(**values)
    check_writable(request.out, "--out")
    existing = load_calibration(request.out) if request.update else None
    if request.update and not request.steps:
        raise InputError("an update has nothing to add: no method's calibration was asked for")
    prepared = {name: steps[name].calibration.prepare(s, existing) for name, s in settings.items()}
    texts = [] if request.update else _load_text(request.text)
    device, device_map = split_device(request.device)
    loaded = load_model(request.model, device=device, dtype=request.dtype, device_map=device_map)
    said = []
    with progress() as bar:
        if existing is not None:
            existing.check_model(loaded.fingerprint, loaded.name)
            cal = existing
        else:
            ts = request.text_settings
            task = bar.add_task("general text", total=ts.samples)
            with ExitStack() as watching:  # a step may read what it needs from this pass, not run it again
                for prep in prepared.values():
                    if hasattr(prep, "observe_text"):
                        watching.enter_context(prep.observe_text(loaded))
                cal = calibrate_text(loaded, texts, ts, description=request.text,
                                     on_batch=lambda n: bar.advance(task, n))
            said.append(f"{cal.meta['samples']} windows x {ts.seq_len} tokens")
        ctx = StepContext(cal, loaded, pp_prefill(loaded, cal), bar, texts, request.text_settings)
        for name, prep in prepared.items():
            step = steps[name].calibration
            said.append((step.update if request.update else step.run)(ctx, prep))
    save_calibration(cal, request.out)
    verb = "updated" if request.update else "wrote"
    return f"{verb} {request.out}: {', '.join(said)}, model {loaded.fingerprint}"


def _load_text(text: str) -> list[str]:
    from aapp.text import load_text

    return load_text(text, split="calib")
