"""What a pruning method is: options in, a per-layer selection of kept structures out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from aapp.calibration.store import Calibration
from aapp.models.adapters import Geometry, LayerParts
from aapp.pruning.forward import ProbeStats
from aapp.pruning.masks import LayerMask, top_heads_in_groups, top_k
from aapp.pruning.plan import LayerBudget, PrunePlan
from aapp.pruning.scores import flap_compensation


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


class Method(ABC):
    """A pruning method. Subclasses are small: scores in, `select_top` out."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True
    uses_probe: ClassVar[bool] = False

    @property
    def carries_state(self) -> bool:
        """Whether a batch's selection depends on the batches before it (then a resumed run must
        replay them from the first)."""
        return False

    def bind(self, model, adapter, geometry: Geometry, plan: PrunePlan, calib: Calibration | None) -> None:
        """Called once when a model is wrapped; static methods precompute here."""
        self.geometry, self.plan, self.calib = geometry, plan, calib

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


def compensated(calib: Calibration, layer: int, parts: LayerParts, mask: LayerMask, g: Geometry) -> Selection:
    """`mask` plus FLAP-style bias compensation: what the pruned heads and channels output on
    average over calibration is added back as o_proj / down_proj biases, so pruning removes a
    channel's fluctuation but not its mean."""
    t = calib.tensors
    return Selection(mask,
                     attn_bias=flap_compensation(t["attn.mean"][layer], parts.o_proj.weight, mask.q_rows(g.head_dim)),
                     mlp_bias=flap_compensation(t["mlp.mean"][layer], parts.down_proj.weight, mask.channels))
