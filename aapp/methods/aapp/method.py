"""Alignment-Aware Probe Pruning (Patel et al., arXiv 2511.07482), with its open choices explicit.

AAPP is Probe Pruning plus two things calibrated on harmful vs harmless prompts:
  * alignment-critical heads and channels per layer (aapp.methods.aapp.critical);
  * a risk gate that decides, per batch (or per sample), whether the input looks harmful
    (aapp.methods.aapp.gates).
When the gate fires, critical channels are treated as infinitely important: they are
kept, and as many of the lowest-scoring other channels are pruned in their place, so
every layer keeps exactly PP's counts of heads, kv heads and channels, which the plan
fixes per layer (matched compute by construction; see aapp.methods.plan).

Where protection and budget go when the gate fires (aapp.methods.aapp.allocation): `protect_by`
"flat" protects `protect` of every layer's heads and channels, "mass" the same totals spread over
the pruned layers by refusal mass; `layer_budget` "risk" also moves MLP channels (up to
`budget_shift` of a layer's pruned ones) toward the layers of most refusal mass, keeping the total,
so compute still matches PP's to the FLOP.

The gate reads the block input of `gate_layer` (default: for the direction and kl gates,
the best in-sample AUROC among the layers PP keeps dense, so the decision is made before
any pruned layer runs and is itself unaffected by pruning; for the fitted logistic gate,
the earliest layer within 0.01 of its best cross-validated AUROC, so pruned layers before
it select as PP does). A batch fires if any of its prompts scores past the
calibrated threshold (a harmful prompt must not lose protection to benign neighbours);
`per_sample` splits a batch into gated and ungated groups instead: each prompt is scored on its
own when the prefill reaches the gate layer (its router), and the groups run apart
(aapp.pruning.engine.run_routed).

Per batch, AAPP keeps what its gate read in a `GateRead` (the batch's state, which the engine makes
and drops) and reports each row's `GateFacts`; across batches it keeps only the gate history that
`refresh` moves (hence `carries_state`).

`on_fire` says what a fired request costs. "protect" is the paper's contract above (matched compute,
decided per batch unless `per_sample`). "dense" and a lighter ratio R make the gate a router: each
request is scored on its own (aapp.pruning.engine asks the router inline, at the gate layer's
prefill), and a fired one runs unpruned, or at ratio R with its critical channels protected, while
the others run exactly as Probe Pruning. A router cuts its gate at the calibrated routing cut
(gates.ROUTE_RECALL of harmful calibration prompts pass it), and, unless `gate_layer` is given,
reads the layer of least expected compute on a benign-heavy stream (`read_layer`).

`restore` (aapp.methods.aapp.restore) also adds back, on fired batches only, what pruning removes
from harmful inputs: the pruned structures' mean output over the harmful calibration prompts
("harmful-mean"), or only its component along the refusal direction ("direction"), as o_proj /
down_proj biases. Unfired batches get exactly PP's selection and biases, so general text pays
nothing for it, and a fired batch pays one vector add per token and biased site (counted as
`bias` FLOPs by the engine); the masks, and so the matmul FLOPs, are those of restore "none".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from aapp.calibration.collect import counted_tokens, token_mean
from aapp.calibration.store import SiteStats
from aapp.console import warn
from aapp.methods.aapp.store import Alignment, alignment, check_shapes
from aapp.errors import AappError, CalibrationError, InputError
from aapp.methods.aapp.allocation import (LAYER_BUDGET, PROTECT_BY, protect_counts, protected_count,
                                          refusal_direction, refusal_mass, shift_channels)
from aapp.methods.aapp.critical import CRITICAL, check_setdiff_pools, critical_set
from aapp.methods.aapp.gates import GATES, ROUTE_RECALL
from aapp.methods.aapp.restore import RESTORE, restored
from aapp.methods.base import Batch, LayerContext, Route, RowDecisions, Router, Selection, select_top
from aapp.methods.report import MethodFacts
from aapp.methods.plan import PrunePlan
from aapp.methods.options import option
from aapp.methods.pp import PPScoring, ProbePruning
from aapp.models.adapters import Geometry


@dataclass(frozen=True)
class AAPPOptions:
    """AAPP's own options (`aapp methods aapp` lists them); the engine's (dense_layers, reprobe_every,
    ...) are aapp.pruning.engine.PruneOptions'."""

    gate: str | None = option(None, "risk gate: " + " | ".join(GATES)
                              + " (none: direction for on_fire=protect, logistic when routing)")
    on_fire: str = option("protect", "a fired request: protect (the paper: protected at matched compute) | "
                                     "dense (runs unpruned) | R (a lighter ratio, protected)")
    protect: float = option(0.3, "fraction of each layer's heads and MLP channels protected when the gate fires")
    critical: str = option("setdiff", "critical channels: " + " | ".join(CRITICAL))
    gate_layer: int | None = option(None, "layer whose input the gate reads (none: chosen at calibration)")
    per_sample: bool = option(False, "gate each prompt, splitting a batch into gated and ungated parts")
    refresh: int = option(0, "move the gate's history toward what it saw every N batches (0: off)")
    refresh_momentum: float = option(0.9, "momentum of the refresh")
    protect_by: str = option("flat", "where protection goes: " + " | ".join(PROTECT_BY)
                             + " (mass: the same total, spread over pruned layers by refusal mass)")
    layer_budget: str = option("flat", "on fire: " + " | ".join(LAYER_BUDGET)
                               + " (risk: MLP channels move toward refusal mass; same total)")
    budget_shift: float = option(0.5, "layer_budget=risk: at most this fraction of a layer's pruned channels returns")
    restore: str = option("none", "on fire, add back: " + " | ".join(RESTORE)
                          + " (the pruned channels' mean output on harmful prompts, or its refusal-direction part)")

    def __post_init__(self):
        if self.on_fire not in ("protect", "dense"):
            try:
                r = float(self.on_fire)
            except ValueError:
                raise AappError(f"on_fire takes protect, dense or a ratio, got {self.on_fire!r}") from None
            if not 0.0 < r < 1.0:
                raise AappError(f"on_fire ratio must be in (0, 1), got {self.on_fire}")
        if self.routes:
            if self.per_sample:
                raise AappError(f"per_sample applies to on_fire=protect; on_fire={self.on_fire} routes every request alone")
            if self.on_fire == "dense":
                moved = [f"{k}={getattr(self, k)}" for k in UNPROTECTED if getattr(self, k) != getattr(AAPPOptions, k)]
                if moved:
                    raise AappError(f"on_fire=dense runs fired requests unpruned, so nothing is protected: "
                                    f"{', '.join(moved)} does not apply")
            if self.layer_budget != "flat":
                raise AappError(f"layer_budget applies to on_fire=protect (got on_fire={self.on_fire})")
        for name, choices in (("risk_gate", GATES), ("critical", CRITICAL), ("protect_by", PROTECT_BY),
                              ("layer_budget", LAYER_BUDGET), ("restore", RESTORE)):
            value = getattr(self, name)
            if value not in choices:
                raise AappError(f"unknown {name.removeprefix('risk_')} {value!r}; choose one of {', '.join(choices)}")
        for name in ("protect", "budget_shift", "refresh_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AappError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.refresh < 0:
            raise AappError(f"refresh must be at least 0, got {self.refresh}")
        if self.routes and not GATES[self.risk_gate].reads_residual:
            raise AappError(f"the {self.risk_gate} gate reads nothing, so it cannot route requests (on_fire={self.on_fire})")

    @property
    def risk_gate(self) -> str:
        """The gate that runs: `gate`, or by default direction for protect and logistic when routing."""
        return self.gate if self.gate is not None else ("logistic" if self.routes else "direction")

    @property
    def routes(self) -> bool:
        """Whether the gate routes each request (on_fire dense or R) rather than protecting in place."""
        return self.on_fire != "protect"

    @property
    def fire_ratio(self) -> float | None:
        """The ratio a fired request runs at: None (the plan's, protected), 0 (dense) or R."""
        if self.on_fire == "protect":
            return None
        return 0.0 if self.on_fire == "dense" else float(self.on_fire)


# What protection is made of: options that do not apply where a fired request runs unpruned.
UNPROTECTED = ("protect", "critical", "protect_by", "budget_shift", "restore")
BENIGN_SHARE = 0.9  # the traffic the read layer is chosen for: 9 benign requests in 10


def read_layer(fit, plan: PrunePlan, num_layers: int, fire_ratio: float) -> int:
    """The layer a router reads, chosen on calibration alone: of the layers whose input is still the
    dense model's (up to the first pruned one, so the gate's cut holds and nothing is recomputed on a
    fire), the one of least expected FLOPs on a stream of BENIGN_SHARE benign requests, each escalated
    at the rate its routing cut escalated benign calibration prompts (harmful ones at ROUTE_RECALL);
    ties go to the better pair AUROC, then to the earlier layer."""
    if fit.route_fpr is None:
        raise CalibrationError("the calibration file has no routing cuts (it predates routing); run `aapp calibrate` again")
    first_pruned = _last_dense_read(plan, num_layers)
    pruned_cost, fired_cost = 1.0 - plan.ratio, 1.0 - fire_ratio
    pairs = fit.pair_auroc if fit.pair_auroc is not None else torch.zeros_like(fit.route_fpr)

    def cost(i: int) -> tuple[float, float, int]:
        fpr = float(fit.route_fpr[i])
        benign = fpr * fired_cost + (1 - fpr) * pruned_cost
        harmful = ROUTE_RECALL * fired_cost + (1 - ROUTE_RECALL) * pruned_cost
        return (round(BENIGN_SHARE * benign + (1 - BENIGN_SHARE) * harmful, 9), -float(pairs[i]), i)
    return min(range(first_pruned + 1), key=cost)

def _last_dense_read(plan: PrunePlan, num_layers: int) -> int:
    """The last layer whose block input at prefill is the dense model's (the first pruned one; the last
    layer when the plan prunes none, or under a dense prefill)."""
    return plan.last_dense_read if plan.last_dense_read is not None else num_layers - 1


def gate_layer(options: AAPPOptions, align: Alignment, g: Geometry, plan: PrunePlan) -> int:
    """The layer whose input the gate reads (see the module docstring), from calibration alone."""
    if options.gate_layer is not None:
        if not 0 <= options.gate_layer < g.num_layers:
            raise AappError(f"gate_layer must be in [0, {g.num_layers - 1}], got {options.gate_layer}")
        return options.gate_layer
    gate = GATES[options.risk_gate]
    if not gate.reads_residual:
        return 0
    fit = align.gates.get(gate.name)
    if fit is None:
        raise CalibrationError(f"the calibration file has no {gate.name} gate; run `aapp calibrate` again")
    if options.routes:
        return read_layer(fit, plan, g.num_layers, options.fire_ratio)
    if gate.fitted:
        # A fitted gate reads harm well only some layers in: the earliest layer within 0.01 of its best
        # cross-validated AUROC. Pruned layers before it run unprotected (the decision is not made yet).
        return int(torch.nonzero(fit.auroc >= fit.auroc.max() - 0.01)[0])
    return int(torch.argmax(fit.auroc[: _last_dense_read(plan, g.num_layers) + 1]))


def gate_threshold(gate: str, layer: int, align: Alignment, g: Geometry, plan: PrunePlan) -> tuple[float, str]:
    """The threshold the gate compares its score at `layer` with, and where it came from: the
    thresholds fitted on PP-pruned features at this plan's ratio ("pruned@RATIO") when the gate
    reads a layer after the first pruned one and the file has them for this ratio and these dense
    layers; else the dense fit's ("dense"), with a warning where pruned features meet it."""
    dense = float(align.gates[gate].threshold[layer])
    first_pruned = plan.last_dense_read
    if first_pruned is None or layer <= first_pruned:
        return dense, "dense"  # the gate's layer input is the dense model's
    pruned = align.pruned
    if pruned is not None and min(pruned.dense_layers, g.num_layers - 1) == first_pruned:  # the same plan
        at = pruned.find(gate, plan.ratio)
        if at is not None:
            return float(at[layer]), f"pruned@{plan.ratio:g}"
    warn(f"aapp: the {gate} gate reads layer {layer}, after pruned layers, but its threshold was fitted on dense "
         f"features (pruning shifts its scores: it may fire never, or always); fix: update the calibration with "
         f"gate_ratios={plan.ratio:g} and dense_layers={first_pruned}")
    return dense, "dense"


def route_threshold(gate: str, layer: int, align: Alignment, g: Geometry, plan: PrunePlan) -> tuple[float, str]:
    """The cut a router compares its gate's score at `layer` with, and where it came from: the routing
    cut ("route", ROUTE_RECALL of harmful calibration prompts above it) where the layer's input is the
    dense model's; after pruned layers, gate_threshold's (the routing cut was taken on dense features)."""
    fit = align.gates[gate]
    if plan.last_dense_read is not None and layer > plan.last_dense_read:
        return gate_threshold(gate, layer, align, g, plan)
    if fit.route_threshold is None:
        raise CalibrationError("the calibration file has no routing cuts (it predates routing); run `aapp calibrate` again")
    return float(fit.route_threshold[layer]), "route"


class AAPP(ProbePruning):
    name = "aapp"

    def __init__(self, options: AAPPOptions = AAPPOptions(), scoring: PPScoring = PPScoring(),
                 needs_route: bool = False):
        super().__init__(scoring)
        self.options = replace(options, gate=options.risk_gate)  # provenance records the gate that runs
        self._needs_route = needs_route
        self.gate = GATES[options.risk_gate]

    @property
    def carries_state(self) -> bool:
        return self.options.refresh > 0

    def settings(self) -> dict[str, object]:
        return {"options": self.options, "scoring": self.scoring}

    # -- calibration-time facts -------------------------------------------------------------
    def bind(self, model, adapter, geometry, plan, calib):
        if self._needs_route and not self.options.routes:
            raise AappError(f"{self.name} runs fired requests at a lighter ratio: give it one, e.g. on_fire=0.15")
        super().bind(model, adapter, geometry, plan, calib)
        self.alignment = alignment(calib)  # a one-line error where the file has none
        check_shapes(calib, geometry, getattr(model, "name_or_path", "this model"))
        if self.options.critical == "setdiff":
            check_setdiff_pools(self.options.protect, geometry)
        self.n_post = self.alignment.post_instruction_tokens
        self.gate_layer = gate_layer(self.options, self.alignment, geometry, plan)
        self.threshold, self.threshold_source = float("nan"), None
        if self.options.routes:
            self.threshold, self.threshold_source = route_threshold(self.gate.name, self.gate_layer, self.alignment,
                                                                    geometry, plan)
            fire = self.options.fire_ratio
            if fire and fire >= plan.ratio:
                raise AappError(f"on_fire={self.options.on_fire} is no lighter than the ratio {plan.ratio:g}; "
                                "give a smaller ratio, or dense")
        elif self.gate.reads_residual:
            self.threshold, self.threshold_source = gate_threshold(self.gate.name, self.gate_layer, self.alignment, geometry, plan)
        parts = [adapter.layer_parts(model, i) for i in range(geometry.num_layers)]
        o = self.options
        by_mass = o.protect_by == "mass" or o.layer_budget == "risk"
        mass = [refusal_mass(calib, i, p) for i, p in enumerate(parts)] if by_mass else []
        # The budgets a fired batch runs under; the plan's when not fired (or layer_budget="flat").
        self.fired_budgets = (shift_channels(plan, geometry.intermediate_size, [m[1] for m in mass], o.budget_shift)
                              if o.layer_budget == "risk" else plan.budgets)
        if o.protect_by == "mass":
            counts = protect_counts(plan, geometry, o.protect, mass, self.fired_budgets, o.critical == "setdiff")
        else:
            counts = [(protected_count(o.protect, geometry.num_heads),
                       protected_count(o.protect, geometry.intermediate_size))] * geometry.num_layers
        self.critical = {i: critical_set(o.critical, *counts[i], i, parts[i], geometry, calib)
                         for i in range(geometry.num_layers)}
        self._direction = ({i: refusal_direction(calib, i) for i in range(geometry.num_layers)}
                           if o.restore == "direction" else {})
        self._batches = 0
        self._seen = {"harmful": [], "harmless": []}
        a = self.alignment
        # The gate's working history: `refresh` moves it, the calibration stays as loaded.
        self._history = {name: SiteStats(s.resid.mean.clone(), s.resid.sq_mean.clone())
                         for name, s in (("harmful", a.harmful), ("harmless", a.harmless))}

    # -- per batch --------------------------------------------------------------------------
    def watch_layers(self) -> set[int]:
        return {self.gate_layer} if self.gate.reads_residual else set()

    def router(self) -> Router | None:
        """Per-request decisions (routing, or per-sample protection): each prompt's own gate score
        decides how it runs; rows decided alike run together (the engine's job)."""
        if not (self.options.routes or self.options.per_sample) or not self.gate.reads_residual:
            return None
        return Router(self.gate_layer, self._decide)

    def _decide(self, x: torch.Tensor, token_mask: torch.Tensor) -> RowDecisions:
        scores = self.sample_scores(x, token_mask)
        fired = [bool(v > 0) for v in scores]
        return RowDecisions([Route(f, self.options.fire_ratio if f else None) for f in fired],
                            [RoutedGate(f, float(v), self._policy(f)) for f, v in zip(fired, scores)])

    def _policy(self, fired: bool) -> str:
        return self.options.on_fire if fired else "pruned"

    def new_state(self) -> GateRead:
        self._batches += 1
        return GateRead(fired=bool(self.gate.fires))

    def sample_scores(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Gate score per sample from the gate layer's input residual; > 0 means 'closer to harmful'."""
        return self._scores_and_features(x, token_mask)[0]

    def _scores_and_features(self, x: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = token_mean(x, counted_tokens(token_mask, f"last:{self.n_post}"))[:, None, :]  # [B, 1, D]
        i = self.gate_layer
        at = {k: SiteStats(h.mean[i : i + 1], h.sq_mean[i : i + 1]) for k, h in self._history.items()}
        fit = self.alignment.gates[self.gate.name].at(i)
        raw = self.gate.scores(feats, at["harmful"], at["harmless"], fit)
        return raw[:, 0] - self.threshold, feats[:, 0]

    def observe(self, layer: int, x: torch.Tensor, token_mask: torch.Tensor, batch: Batch) -> None:
        if layer != self.gate_layer or not self.gate.reads_residual:
            return
        read: GateRead = batch.state
        scores, feats = self._scores_and_features(x, token_mask)
        read.sample_scores, read.score = scores, float(scores.max())
        # A router's decision stands for its rows; otherwise the batch fires if any prompt scores past the cut.
        read.fired = bool(batch.decision.fired) if isinstance(batch.decision, Route) else bool((scores > 0).any())
        if self.options.refresh:
            self._refresh(read.fired, feats)

    def _refresh(self, fired: bool, feats: torch.Tensor) -> None:
        """Every `refresh` batches, move the gate's harmful/harmless history toward batches it classed so."""
        self._seen["harmful" if fired else "harmless"].append(feats)
        if self._batches % self.options.refresh:
            return
        m = self.options.refresh_momentum
        i = self.gate_layer
        for kind, seen in self._seen.items():
            if seen:
                f = torch.cat(seen)
                h = self._history[kind]
                h.mean[i] = m * h.mean[i] + (1 - m) * f.mean(0)
                h.sq_mean[i] = m * h.sq_mean[i] + (1 - m) * f.square().mean(0)
        self._seen = {"harmful": [], "harmless": []}

    def select(self, ctx: LayerContext) -> Selection:
        heads, channels = self.channel_scores(ctx)
        route = ctx.batch.decision
        fired = route.fired if isinstance(route, Route) else ctx.batch.state.fired
        if not fired:
            return self.compensated(ctx, select_top(heads, channels, ctx.budget, ctx.geometry))
        if not (isinstance(route, Route) and route.ratio is not None):  # at the plan's ratio: its fired budgets
            ctx = replace(ctx, budget=self.fired_budgets[ctx.layer])
        crit = self.critical[ctx.layer]
        mask = select_top(heads, channels, ctx.budget, ctx.geometry,
                          protect_heads=crit.heads, protect_channels=crit.channels)
        # harmful-mean replaces PP's compensation, so it need not be computed first.
        sel = Selection(mask) if self.options.restore == "harmful-mean" else self.compensated(ctx, mask)
        return restored(self.options.restore, self.calib, ctx.layer, ctx.parts, sel, ctx.geometry,
                        self._direction.get(ctx.layer))

    def facts(self, batch: Batch, rows: int) -> list[GateFacts]:
        """The batch's gate decision, and each prompt's own score (the batch's `score` is their max):
        held-out AUROC reads it. A routed row carries the router's decision and score of it."""
        read: GateRead = batch.state
        scores = read.sample_scores
        per_row = [float(v) for v in scores] if scores is not None and len(scores) == rows else [None] * rows
        common = dict(kind=self.gate.name, layer=self.gate_layer, threshold=self.threshold_source)
        if batch.routed:
            return [GateFacts(**common, fired=r.fired, score=r.score, batch_score=r.score, routed=True,
                              policy=r.ran_as) for r in batch.routed]
        score = None if math.isnan(read.score) else read.score
        return [GateFacts(**common, fired=read.fired, score=per_row[j], batch_score=score,
                          policy=self._policy(read.fired)) for j in range(rows)]


@dataclass
class GateRead:
    """What AAPP's gate read of one batch (its per-batch state, in `Batch.state`)."""

    fired: bool = False
    score: float = float("nan")                # the batch's: the max over its prompts
    sample_scores: torch.Tensor | None = None  # each prompt's own


@dataclass(frozen=True)
class RoutedGate:
    """What the router decided of one row (`Batch.routed`)."""

    fired: bool
    score: float
    ran_as: str


@dataclass(frozen=True)
class GateFacts(MethodFacts):
    """AAPP's facts of one row: its gate's kind, layer and threshold source, whether it fired and
    with what score (the row's own, and its batch's), and the policy the row ran under. Rows carry
    them as the `gate` and `policy` fields; nothing outside AAPP names those fields."""

    key: ClassVar[str] = "gate"
    fired: bool = False
    score: float | None = None        # the row's own ("sample_score")
    batch_score: float | None = None  # its batch's: the max over its prompts, or the row's own where routed
    policy: str | None = None
    kind: str | None = None
    layer: int | None = None
    threshold: str | None = None      # where the threshold came from: "dense", "route" or "pruned@RATIO"
    routed: bool = False              # decided per request by the router (on_fire dense or R, or per_sample)

    def to_json(self) -> dict:
        gate = {"kind": self.kind, "fired": self.fired, "score": self.batch_score, "layer": self.layer,
                "threshold": self.threshold}
        if self.score is not None:
            gate["sample_score"] = self.score
        if self.routed:
            gate["per_sample"] = True
        return gate

    def to_api(self) -> dict:
        # The served object names what `threshold` holds: which fit the cut came from, not a number
        # (rows keep `threshold`, so that a resumed sweep's rows stay those of its first run).
        return {("threshold_source" if k == "threshold" else k): v for k, v in self.to_json().items()}

    @classmethod
    def from_json(cls, row: Mapping, where: str) -> "GateFacts":
        gate = row[cls.key]
        if not (isinstance(gate, Mapping) and isinstance(gate.get("fired"), bool)):
            raise InputError(f"{where}: 'gate' must be an object with a boolean 'fired'")
        for name in ("score", "sample_score"):
            if gate.get(name) is not None and not _is_number(gate[name]):
                raise InputError(f"{where}: gate '{name}' must be a number, got {gate[name]!r}")
        policy = row.get("policy")
        return cls(fired=gate["fired"], score=gate.get("sample_score"), batch_score=gate.get("score"),
                   policy=policy if isinstance(policy, str) else None, kind=gate.get("kind"),
                   layer=gate.get("layer"), threshold=gate.get("threshold"), routed=bool(gate.get("per_sample")))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
