"""Hooks that accumulate per-channel statistics at the o_proj and down_proj inputs.

Those inputs are exactly the channels pruning removes: the concatenated attention
heads (o_proj input columns) and the MLP intermediate channels (down_proj input
columns). A collector registers forward pre-hooks, so the model's own forward runs
unchanged, and `remove()` takes them off again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aapp.models.loading import LoadedModel

SITES = ("attn", "mlp")


@dataclass
class Moments:
    """Running sums of x and x^2 per channel, per layer, over counted tokens."""

    sum: torch.Tensor     # [L, C] float64
    sq_sum: torch.Tensor  # [L, C]
    count: torch.Tensor   # [L] tokens counted

    @classmethod
    def zeros(cls, layers: int, channels: int) -> "Moments":
        z = torch.zeros(layers, channels, dtype=torch.float64)
        return cls(z, z.clone(), torch.zeros(layers, dtype=torch.float64))

    def add(self, layer: int, x: torch.Tensor) -> None:
        """x: [N, C] activations of the counted tokens."""
        x = x.detach().to(device="cpu", dtype=torch.float64)
        self.sum[layer] += x.sum(0)
        self.sq_sum[layer] += (x * x).sum(0)
        self.count[layer] += x.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.sum / self.count.clamp(min=1)[:, None]).float()

    def sq_mean(self) -> torch.Tensor:
        return (self.sq_sum / self.count.clamp(min=1)[:, None]).float()


@dataclass
class Collector:
    """Accumulates Moments at both sites while registered on a model.

    `positions` picks which tokens count: "all" (every non-pad token) or "last:N"
    (the final N non-pad tokens of each sequence).
    """

    loaded: LoadedModel
    positions: str = "all"
    moments: dict[str, Moments] = field(default_factory=dict)
    _handles: list = field(default_factory=list)
    _token_mask: torch.Tensor | None = None

    def __post_init__(self):
        g = self.loaded.geometry
        self.moments = {
            "attn": Moments.zeros(g.num_layers, g.num_heads * g.head_dim),
            "mlp": Moments.zeros(g.num_layers, g.intermediate_size),
        }
        model, adapter = self.loaded.model, self.loaded.adapter
        self._handles.append(model.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        for i in range(g.num_layers):
            parts = adapter.layer_parts(model, i)
            self._handles.append(parts.o_proj.register_forward_pre_hook(self._site_hook("attn", i)))
            self._handles.append(parts.down_proj.register_forward_pre_hook(self._site_hook("mlp", i)))

    def _capture_mask(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        self._token_mask = counted_tokens(mask.bool(), self.positions)

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        return x[self._token_mask]

    def _site_hook(self, site: str, layer: int):
        def hook(module, args):
            self.moments[site].add(layer, self._select(args[0]))
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def counted_tokens(mask: torch.Tensor, positions: str) -> torch.Tensor:
    """Boolean [B, S] of the tokens to count, from the padding mask and a positions spec."""
    if positions == "all":
        return mask
    if positions.startswith("last:"):
        n = int(positions.split(":", 1)[1])
        # Rank non-pad tokens from the end of each row; left padding keeps the tail aligned.
        from_end = mask.long().flip(-1).cumsum(-1).flip(-1)
        return mask & (from_end <= n)
    raise ValueError(f"unknown positions spec {positions!r}")


def token_mean(x: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Each row's mean of x [B, S, D] over its counted tokens [B, S] -> [B, D] float32 on the CPU:
    a prompt's gate feature, at calibration and at prune time alike."""
    m = counted.to(x.dtype)[..., None]
    return ((x * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()
