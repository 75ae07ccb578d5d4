"""The pruning engine's settings (aapp.pruning.engine runs them), as plain data a method can name:
which of them apply to a method is the method's own declaration (`Method.engine_options`), made from
the groups below."""

from __future__ import annotations

from dataclasses import dataclass

from aapp.errors import AappError
from aapp.methods.options import option


@dataclass(frozen=True)
class PruneOptions:
    """Engine settings shared by every method. Defaults follow Probe Pruning. The fields with help
    are options a user sets per method; each method declares which apply to it (Method.engine_options,
    from the groups below)."""

    ratio: float = 0.0
    dense_layers: int = option(3, "first layers kept dense; the rest are pruned harder to match the ratio")
    channel_multiple: int = option(64, "MLP kept counts are rounded to multiples of this")
    probe_positions: float = option(0.5, "fraction of (non-pad) positions in the probe")
    probe_samples: float = option(0.05, "fraction of a batch's samples in the probe (at least one)")
    ema_momentum: float | None = option(None, "update history from kept channels: H = m*H + (1-m)*batch "
                                              "(PP: 0.99; none: off)")
    reprobe_every: int = option(0, "decode steps between MLP channel re-selections (0: never)")
    prefill: str = option("probe", "probe: PP's probe of the batch picks its channels, the prefill runs pruned | "
                                   "dense: the prefill runs unpruned and each row's channels come from its own "
                                   "prefill activations; decode runs pruned")
    dense_tokens: int = option(0, "with prefill=dense, the first N generated tokens also run unpruned (0: off)")
    backend: str = option("auto", "pruned matmuls: auto | torch | triton")

    def __post_init__(self):
        for name in ("probe_positions", "probe_samples"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise AappError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.ema_momentum is not None and not 0.0 <= self.ema_momentum < 1.0:
            raise AappError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.prefill not in PREFILL:
            raise AappError(f"prefill takes {' or '.join(PREFILL)}, got {self.prefill!r}")
        if self.dense_tokens and self.prefill != "dense":
            raise AappError("dense_tokens extends the unpruned prefill; give prefill=dense with it")
        if self.prefill == "dense" and self.ema_momentum is not None:
            raise AappError("ema_momentum learns from the pruned prefill, which prefill=dense runs unpruned; "
                            "use one of them")
        if self.prefill == "dense" and self.reprobe_every:
            raise AappError("reprobe_every re-runs the batch's probe during decode; with prefill=dense each row's "
                            "channels come from its own prefill, so it does not apply")
        for name in ("dense_layers", "reprobe_every", "dense_tokens"):
            if getattr(self, name) < 0:
                raise AappError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.channel_multiple < 1:
            raise AappError(f"channel_multiple must be at least 1, got {self.channel_multiple}")


PREFILL = ("probe", "dense")
# Every pruning method takes the plan's options; only a method that runs the probe takes its options.
PLAN_OPTIONS = ("dense_layers", "channel_multiple", "prefill", "dense_tokens", "backend")
PROBE_OPTIONS = ("probe_positions", "probe_samples", "ema_momentum", "reprobe_every")
