"""What a pruning method is: the protocol the engine drives, and the plain data it passes.

The engine (aapp.pruning) calls a method only through `Method`'s hooks; a method owns all of
its behaviour behind them (AAPP's gate, its batch splitting, whether it carries state), so no
code elsewhere asks a method's name. This module imports nothing from aapp.pruning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from aapp.calibration.store import Calibration
from aapp.methods.masks import LayerMask, top_heads_in_groups, top_k
from aapp.methods.plan import LayerBudget, PrunePlan
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


@dataclass(frozen=True)
class Selection:
    mask: LayerMask
    attn_bias: torch.Tensor | None = None
    mlp_bias: torch.Tensor | None = None


# What the engine offers a method that wants to look ahead before a batch runs: the block input
# of `layer` for the batch's prompts -> (x [B, S, D], token_mask [B, S], FLOPs spent getting it).
LayerInput = Callable[[int], tuple[torch.Tensor, torch.Tensor, float]]


@dataclass(frozen=True)
class BatchPart:
    """Rows of a batch generated together, and what the method decided for them beforehand."""

    rows: list[int]
    decision: object = None                   # handed back to the method while the part runs
    lookahead_flops: float = 0.0              # this part's share of the FLOPs spent deciding
    row_info: list[dict] = field(default_factory=list)  # per row, merged into its output row


class Method(ABC):
    """A pruning method. Subclasses are small: scores in, `select_top` out.

    The engine calls, per model: `bind`; per batch: `split_batch` (before generation), then
    for each part `running(part)` around its generation, in which `begin_batch` (at prefill),
    `observe` (watched layers) and `select` (each pruned layer) are called; `batch_info` and
    `sample_info` after it.
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

    def bind(self, model, adapter, geometry: Geometry, plan: PrunePlan, calib: Calibration | None) -> None:
        """Called once when a model is wrapped; static methods precompute here."""
        self.geometry, self.plan, self.calib = geometry, plan, calib

    def split_batch(self, batch_size: int, layer_input: LayerInput) -> list[BatchPart]:
        """How to generate a batch: whole (the default), or as sub-batches the method decides on."""
        return [BatchPart(list(range(batch_size)))]

    @contextmanager
    def running(self, part: BatchPart) -> Iterator[None]:
        """Around the generation of one part of a batch (see `split_batch`)."""
        yield

    def begin_batch(self) -> None:
        """Called at the start of every new batch (prefill), before the first layer."""

    def watch_layers(self) -> set[int]:
        """Layers whose block input `observe` should see at prefill (pruned or not)."""
        return set()

    def observe(self, layer: int, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        """See a watched layer's block input [B, S, D] before any selection at that layer."""

    @abstractmethod
    def select(self, ctx: LayerContext) -> Selection: ...

    def batch_info(self) -> dict:
        """Per-batch facts for output rows (e.g. a gate decision)."""
        return {}

    def sample_info(self, batch_size: int) -> dict[str, list[dict]]:
        """Per-sample refinements of `batch_info` for the batch just run: {key: [one dict per sample]}."""
        return {}


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
