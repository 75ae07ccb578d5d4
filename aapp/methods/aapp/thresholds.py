"""AAPP's gate thresholds fitted on the features a pruned model gives (issue #15).

The pruned prefill is the engine's to run (it sits above the methods): the caller hands it in as
`PrunedPrefill`, a function of the ratio and dense layers that returns a context inside which
`loaded.model` runs Probe Pruning's prefill at that plan (aapp.pruning.calibrate.pp_prefill).

AAPP's gate reads the block input of its layer, and every pruned layer before it has already
run, selecting as Probe Pruning does (the gate has not decided yet). Pruning keeps the order of
the gate's scores but shifts their scale, so a threshold fitted on the dense model's features
may never be passed. Here, per ratio, the harmful and harmless calibration prompts run PP's
pruned prefill (no generation), each prompt's post-instruction mean residual is read at every
layer input as the dense pass reads it (aapp.methods.aapp.passes.prompt_features), and every
residual gate's threshold is refitted there (aapp.methods.aapp.gates.refit_thresholds).

Batches hold prompts of one kind, as `aapp eval-refusal` sends them (a prompt set at a time)
and as the dense fit's per-prompt features are taken. PP's selection depends on the batch (its
probe reads some of the batch's rows), so the composition matters: on the tiny test models at
ratio 0.3, batches alternating harmful and harmless prompts moved the refitted thresholds by up
to 0.3, where pruning moved them from the dense ones by up to 2.2 (random weights: the sizes
say little about a trained model). A deployment whose batches mix kinds sees features between
the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from aapp.calibration.store import Calibration
from aapp.errors import AappError, InputError
from aapp.methods.aapp.gates import refit_thresholds
from aapp.methods.aapp.passes import prompt_features, window_features
from aapp.methods.aapp.store import Alignment, PrunedThresholds, alignment, set_alignment
from aapp.methods.plan import PrunePlan, check_ratio, make_plan
from aapp.methods.registry import PrunedPrefill
from aapp.models.adapters import Geometry
from aapp.models.loading import LoadedModel

BATCH_SIZE = 8


def parse_gate_ratios(text: str) -> tuple[float, ...]:
    """"0.2,0.3" -> (0.2, 0.3); "" or "none" -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"gate ratios {text!r}: expected comma-separated numbers, e.g. 0.2,0.3,0.4, "
                         "or 'none'") from None
    for r in ratios:
        check_ratio(r)
        if r == 0:
            raise InputError("gate ratio 0 prunes nothing (the dense thresholds serve it); give ratios > 0")
    return ratios


def _plan(g: Geometry, ratio: float, dense_layers: int, channel_multiple: int) -> PrunePlan:
    return make_plan(g, ratio, dense_layers=dense_layers, channel_multiple=channel_multiple)


def plannable(g: Geometry, ratios: Sequence[float], dense_layers: int,
              channel_multiple: int = 64) -> tuple[list[float], list[str]]:
    """The ratios the engine can run on this model at these dense layers, and why each other one
    cannot (a few-layer model cannot prune 0.4 of its compute from its one pruned layer)."""
    ok, why = [], []
    for r in ratios:
        try:
            _plan(g, r, dense_layers, channel_multiple)
            ok.append(r)
        except AappError as e:
            why.append(str(e))
    return ok, why


def pruned_features(loaded: LoadedModel, n_post: int, prompts: Sequence[str], ratio: float, prefill: PrunedPrefill,
                    dense_layers: int, batch_size: int = BATCH_SIZE,
                    on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Per-prompt gate features [N, L, D] at every layer input, under PP's prefill at `ratio`."""
    with prefill(ratio, dense_layers):
        return prompt_features(loaded, prompts, n_post, batch_size, on_batch)


def fit_pruned_thresholds(loaded: LoadedModel, align: Alignment, harmful: Sequence[str], harmless: Sequence[str],
                          ratios: Sequence[float], prefill: PrunedPrefill, dense_layers: int,
                          channel_multiple: int = 64, batch_size: int = BATCH_SIZE,
                          on_batch: Callable[[int], None] | None = None, prose: torch.Tensor | None = None,
                          max_fpr: float | None = None) -> PrunedThresholds:
    """Every residual gate's thresholds [R, L] at `ratios` (each > 0), from PP-pruned prefills of the
    prompts (one per ratio: harmful, then harmless, then the `prose` token windows [N, S] if given)
    at `dense_layers`, each cut to pass at most `max_fpr` of the benign inputs."""
    if not harmful or not harmless:
        raise InputError("pruned gate thresholds need both harmful and harmless prompts")
    g = loaded.geometry
    for r in ratios:
        if r <= 0:
            raise InputError(f"gate ratio {r:g} prunes nothing; the dense thresholds serve it")
        _plan(g, r, dense_layers, channel_multiple)  # fails before any pass
    n_post = align.post_instruction_tokens
    per_ratio = []
    for ratio in ratios:
        first_pruned = _plan(g, ratio, dense_layers, channel_multiple).first_pruned
        with prefill(ratio, dense_layers):
            fh, fs = (prompt_features(loaded, p, n_post, batch_size, on_batch) for p in (harmful, harmless))
            fp = window_features(loaded, prose, n_post, batch_size) if prose is not None and len(prose) else None
        per_ratio.append(refit_thresholds(fh, fs, align, first_pruned, fp, max_fpr))
    gates = per_ratio[0].keys() if per_ratio else ()
    return PrunedThresholds(ratios=tuple(float(r) for r in ratios), dense_layers=dense_layers,
                            threshold={g: torch.stack([t[g] for t in per_ratio]) for g in gates}, max_fpr=max_fpr)


def add_pruned_thresholds(calib: Calibration, thresholds: PrunedThresholds) -> None:
    """Store `thresholds` in `calib` in place, merged with those it holds (see PrunedThresholds.merged)."""
    a = alignment(calib)
    set_alignment(calib, replace(a, pruned=thresholds if a.pruned is None else a.pruned.merged(thresholds)))
