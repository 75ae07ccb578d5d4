"""What a pruning method is: the protocol the engine drives, and the plain data it passes.

A method scores and selects (`select`, per pruned layer and batch), and declares what it must
see: the layers it watches (`watch_layers`/`observe`) and, if it decides per request, a `Router`.
Which rows run together is the engine's decision (aapp.pruning.engine.run_routed): it asks the
router for each row's decision and runs each group of rows under its own, handing the group's
decision to the method in its `Batch`. No code elsewhere asks a method's name. This module imports
nothing from aapp.pruning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from aapp.calibration.store import Calibration
from aapp.errors import CalibrationError
from aapp.methods.engine_options import PLAN_OPTIONS
from aapp.methods.masks import LayerMask, top_heads_in_groups, top_k
from aapp.methods.plan import LayerBudget, PrunePlan
from aapp.methods.report import MethodFacts
from aapp.methods.scores import flap_compensation
from aapp.models.adapters import Geometry, LayerParts


@dataclass(frozen=True)
class ProbeStats:
    """Squared activations at the o_proj and down_proj inputs, averaged over probe tokens."""

    attn: torch.Tensor  # [heads * head_dim]
    mlp: torch.Tensor   # [intermediate]
    tokens: int         # probe tokens (queries) that ran through the MLP
    context: int        # key/value positions the probe's attention read


@dataclass(frozen=True)
class Batch:
    """One batch (or routed group of a batch's rows) as a method sees it while it runs: the router's
    decision for its rows (None: no router, or the rows were not routed), what the router said of each
    row, and the method's own per-batch state (`Method.new_state`). The engine creates it at prefill and
    drops it with the batch, so a method keeps nothing of a batch but what it declares it carries."""

    decision: object = None   # a Route, the same for every row of the group
    routed: tuple = ()        # per row: the router's facts of it (RowDecisions.facts), or () when not routed
    state: object = None


@dataclass(frozen=True)
class LayerContext:
    """Everything a method may look at when it picks one layer's structures for a batch."""

    layer: int
    parts: LayerParts
    geometry: Geometry
    budget: LayerBudget
    probe: ProbeStats | None
    history: dict[str, torch.Tensor] | None  # this layer's working history per site, or None
    residual: torch.Tensor                   # block input [B, S, D]
    token_mask: torch.Tensor                 # [B, S] non-pad tokens
    batch: Batch = Batch()


@dataclass(frozen=True)
class Selection:
    mask: LayerMask
    attn_bias: torch.Tensor | None = None
    mlp_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class Route:
    """A routing decision the engine understands: run the rows pruned at `ratio` (None: the plan's;
    0: dense, no pruning at all), `fired` telling the method that its gate fired for them."""

    fired: bool = False
    ratio: float | None = None


@dataclass(frozen=True)
class RowDecisions:
    """A router's decision for each row of a batch (hashable `Route`s; rows with equal ones run
    together, under `Batch.decision`), and per row what the router scored of it (`Batch.routed`)."""

    decisions: list
    facts: list


@dataclass(frozen=True)
class Router:
    """How a method decides per request: from the block input of `layer` ([B, S, D]) and the token
    mask ([B, S]), `decide` returns each row's decision (a `Route`) without changing the method.
    The engine asks it inline, at prefill, when the batch reaches `layer`; rows decided alike run on,
    and a batch whose rows differ (or whose decision would have run the layers before `layer`
    otherwise) is stopped there and re-run group by group (aapp.pruning.engine.run_routed)."""

    layer: int
    decide: Callable[[torch.Tensor, torch.Tensor], RowDecisions]


class Method(ABC):
    """A pruning method. Subclasses are small: scores in, `select_top` out.

    The engine calls, per model: `bind`, `router`, `watch_layers`; per batch (or routed group of a
    batch's rows): `new_state` at prefill, `observe` for each watched layer and `select` for each pruned
    layer, all with the batch (`Batch`, or `LayerContext.batch`); the runner reads `facts` after it. Each
    hook has one signature; a method that wraps others (aapp.methods.hybrid) forwards every one.
    """

    name: str = "method"  # the spec it was made from (aapp.methods.registry), used in output rows
    options: object = None  # an instance of the registration's options class, if it has one
    needs_calibration: ClassVar[bool] = True
    prunes: ClassVar[bool] = True  # False for the dense reference, whose rows report ratio 0

    @property
    def uses_probe(self) -> bool:
        """Whether `select` reads `ctx.probe` (the engine runs the probe only then)."""
        return False

    @property
    def carries_state(self) -> bool:
        """Whether a batch's selection depends on the batches before it (then a resumed run must
        replay them from the first)."""
        return False

    @property
    def engine_options(self) -> tuple[str, ...]:
        """The engine's options (aapp.methods.engine_options.PruneOptions) this method takes: by
        default the plan's; a method that runs the probe adds the probe's."""
        return PLAN_OPTIONS

    def settings(self) -> dict[str, object]:
        """What the method ran with, for provenance: its declared settings dataclasses by name."""
        return {} if self.options is None else {"options": self.options}

    def check_calibration(self, calib: object | None) -> None:
        """One line where the method needs a calibration (a loaded file, or its path) and has none."""
        if self.needs_calibration and calib is None:
            raise CalibrationError(f"method {self.name!r} needs a calibration file; make one with `aapp calibrate`")

    def bind(self, model, adapter, geometry: Geometry, plan: PrunePlan, calib: Calibration | None) -> None:
        """Called once when a model is wrapped; static methods precompute here."""
        self.geometry, self.plan, self.calib = geometry, plan, calib

    def router(self) -> Router | None:
        """How this method decides per request before a batch runs, or None (it does not)."""
        return None

    def new_state(self) -> object:
        """A fresh per-batch state (None: the method keeps none); it lives in `Batch.state`."""
        return None

    def watch_layers(self) -> set[int]:
        """Layers whose block input `observe` should see at prefill (pruned or not)."""
        return set()

    def observe(self, layer: int, x: torch.Tensor, token_mask: torch.Tensor, batch: Batch) -> None:
        """See a watched layer's block input [B, S, D] before any selection at that layer."""

    @abstractmethod
    def select(self, ctx: LayerContext) -> Selection: ...

    def facts(self, batch: Batch, rows: int) -> list[MethodFacts | None]:
        """The method's own facts of each of the batch's `rows` rows (e.g. its gate's decision)."""
        return [None] * rows


def select_top(head_scores: torch.Tensor, channel_scores: torch.Tensor, budget: LayerBudget, g: Geometry,
               protect_heads: torch.Tensor | None = None,
               protect_channels: torch.Tensor | None = None) -> LayerMask:
    """Keep the budget's highest-scoring heads (in exactly budget.kv_heads GQA groups) and
    channels, protected ones first."""
    heads = top_heads_in_groups(head_scores, budget.heads, g.group_size, budget.kv_heads, protect_heads)
    channels = top_k(channel_scores, budget.channels, protect_channels)
    return LayerMask.from_kept(heads, channels, g)


def compensation(calib: Calibration, layer: int, parts: LayerParts, mask: LayerMask, g: Geometry,
                 sites: tuple[str, ...] = ("attn", "mlp")) -> Selection:
    """`mask` plus FLAP-style bias compensation at `sites`: what the pruned heads and channels
    output on average over calibration is added back as o_proj / down_proj biases, so pruning
    removes a channel's fluctuation but not its mean."""
    attn = mlp = None
    if "attn" in sites:
        attn = flap_compensation(calib.attn.mean[layer], parts.o_proj.weight, mask.q_rows(g.head_dim))
    if "mlp" in sites:
        mlp = flap_compensation(calib.mlp.mean[layer], parts.down_proj.weight, mask.channels)
    return Selection(mask, attn_bias=attn, mlp_bias=mlp)
