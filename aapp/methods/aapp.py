"""Alignment-Aware Probe Pruning (Patel et al., arXiv 2511.07482), with its open choices explicit.

AAPP is Probe Pruning plus two things calibrated on harmful vs harmless prompts:
  * alignment-critical channels per layer (heads of o_proj, channels of down_proj);
  * a risk gate that decides, per batch (or per sample), whether the input looks harmful.
When the gate fires, critical channels are treated as infinitely important: they are
kept, and as many of the lowest-scoring other channels are pruned in their place, so
every layer keeps exactly PP's counts of heads, kv heads and channels, which the plan
fixes per layer (matched compute by construction; see aapp.pruning.plan).

Choices the paper leaves open, each an option:
  critical = "setdiff"  (default) Wei et al. 2024: of the top 2n channels by importance
                        (Wanda-sp) on harmful prompts, those not among the top 2n on general
                        text, best n kept (so up to n); n = protect x channels, so protect
                        must stay below 0.5 (at 0.5 both pools are every channel: an error)
           | "diff"     standardised harmful-minus-harmless mean activation, |z|
           | "attribution"  how much a channel writes the refusal direction into the
                        residual: |(W[:, k] . d) * (mean_harmful_k - mean_harmless_k)|, with d
                        the unit difference-of-means direction at the layer's output
  gate     = "direction" (default) projection of the post-instruction residual on the
                        difference-of-means refusal direction (Arditi et al. 2024)
           | "kl"       the paper's: KL(input || safe) - KL(input || harmful) of the
                        residual's channel-energy distribution
           | "always" | "never" (= PP exactly)
  The gate reads the block input of `gate_layer` (default: the best in-sample AUROC among
  the layers PP keeps dense, so the decision is made before any pruned layer runs and is
  itself unaffected by pruning). A batch fires if any of its prompts scores past the
  calibrated threshold (a harmful prompt must not lose protection to benign neighbours);
  `per_sample` splits a batch into gated and ungated sub-batches instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aapp.calibration.alignment import direction_scores, kl_scores
from aapp.calibration.collect import counted_tokens
from aapp.errors import AappError, CalibrationError
from aapp.methods.base import LayerContext, Selection, select_top
from aapp.methods.pp import PPOptions, ProbePruning
from aapp.pruning.masks import top_k
from aapp.pruning.scores import per_head, wanda_sp

GATES = ("direction", "kl", "always", "never")
CRITICAL = ("diff", "setdiff", "attribution")


@dataclass(frozen=True)
class AAPPOptions:
    gate: str = "direction"
    protect: float = 0.3          # fraction of heads and of MLP channels per layer protected on fire
    critical: str = "setdiff"
    gate_layer: int | None = None  # None: calibrated, see module docstring
    per_sample: bool = False
    refresh: int = 0              # batches between gate-history refreshes (0: off)
    refresh_momentum: float = 0.9

    def __post_init__(self):
        if self.gate not in GATES:
            raise AappError(f"unknown gate {self.gate!r}; choose one of {', '.join(GATES)}")
        if self.critical not in CRITICAL:
            raise AappError(f"unknown critical-channel scoring {self.critical!r}; choose one of {', '.join(CRITICAL)}")
        if not 0.0 <= self.protect <= 1.0:
            raise AappError(f"--protect must be in [0, 1], got {self.protect}")


@dataclass(frozen=True)
class CriticalSet:
    heads: torch.Tensor
    channels: torch.Tensor


class AAPP(ProbePruning):
    name = "aapp"

    def __init__(self, options: AAPPOptions = AAPPOptions(), pp: PPOptions = PPOptions()):
        super().__init__(pp)
        self.aapp = options
        self.forced: bool | None = None  # set by per-sample splitting
        self._fired = False
        self._score = float("nan")
        self.last_sample_scores: torch.Tensor | None = None

    # -- calibration-time facts -------------------------------------------------------------
    def bind(self, model, adapter, geometry, plan, calib):
        super().bind(model, adapter, geometry, plan, calib)
        if not calib.has_alignment:
            raise CalibrationError("the calibration file has no alignment statistics; run `aapp calibrate` "
                                   "with --harmful and --harmless (the defaults do)")
        t = calib.tensors
        if self.aapp.critical == "setdiff":
            for what, total in (("heads", geometry.num_heads), ("channels", geometry.intermediate_size)):
                n = self._protected_count(total)
                if n and 2 * n >= total:
                    raise AappError(f"--critical setdiff with --protect {self.aapp.protect} protects nothing: its "
                                    f"pools are the top {2 * n} of {total} {what}, i.e. all of them; "
                                    "use a smaller --protect")
        self.n_post = int(calib.meta.get("post_instruction_tokens", 1))
        self.gate_layer = self._choose_gate_layer(t, plan)
        self.critical = {i: self._critical(i, adapter.layer_parts(model, i), t) for i in range(geometry.num_layers)}
        self._batches = 0
        self._seen = {"harmful": [], "harmless": []}
        self._gate_stats = {k: t[f"align.resid.{k}"].clone() for k in
                            ("harmful.mean", "harmless.mean", "harmful.energy", "harmless.energy")}

    def _choose_gate_layer(self, t, plan) -> int:
        if self.aapp.gate_layer is not None:
            if not 0 <= self.aapp.gate_layer < self.geometry.num_layers:
                raise AappError(f"--gate-layer must be in [0, {self.geometry.num_layers - 1}]")
            return self.aapp.gate_layer
        if self.aapp.gate in ("always", "never"):
            return 0
        first_pruned = next((i for i, r in enumerate(plan.layer_ratios) if r > 0), self.geometry.num_layers - 1)
        auc = t[f"align.gate.{self.aapp.gate}.auroc"][: first_pruned + 1]
        return int(torch.argmax(auc))

    def _critical(self, layer: int, parts, t) -> CriticalSet:
        g = self.geometry
        n_heads, n_channels = self._protected_count(g.num_heads), self._protected_count(g.intermediate_size)
        if self.aapp.critical in ("diff", "attribution"):
            if self.aapp.critical == "diff":
                attn, mlp = (self._z(site, layer, t).abs() for site in ("attn", "mlp"))
            else:
                attn = self._attribution("attn", layer, parts.o_proj.weight, t)
                mlp = self._attribution("mlp", layer, parts.down_proj.weight, t)
            heads = top_k(per_head(attn, g.head_dim), n_heads)
            channels = top_k(mlp, n_channels)
        else:
            heads = self._setdiff(per_head(self._importance("attn", layer, parts.o_proj.weight, t, "harmful"), g.head_dim),
                                  per_head(self._importance("attn", layer, parts.o_proj.weight, t, None), g.head_dim),
                                  n_heads)
            channels = self._setdiff(self._importance("mlp", layer, parts.down_proj.weight, t, "harmful"),
                                     self._importance("mlp", layer, parts.down_proj.weight, t, None), n_channels)
        return CriticalSet(heads=heads.to(parts.o_proj.weight.device), channels=channels.to(parts.o_proj.weight.device))

    def _protected_count(self, total: int) -> int:
        return math.floor(self.aapp.protect * total + 0.5)

    @staticmethod
    def _z(site: str, layer: int, t) -> torch.Tensor:
        """Standardised difference of post-instruction means, harmful minus harmless."""
        mh, ms = t[f"align.{site}.harmful.mean"][layer], t[f"align.{site}.harmless.mean"][layer]
        vh = (t[f"align.{site}.harmful.sq_mean"][layer] - mh * mh).clamp(min=0)
        vs = (t[f"align.{site}.harmless.sq_mean"][layer] - ms * ms).clamp(min=0)
        return (mh - ms) / ((vh + vs) / 2 + 1e-6).sqrt()

    @staticmethod
    def _attribution(site: str, layer: int, weight: torch.Tensor, t) -> torch.Tensor:
        """|(W[:, k] . d) * (mean_harmful_k - mean_harmless_k)|: the channel's share of the
        harmful-minus-harmless shift along the refusal direction d at this layer's output."""
        resid_h, resid_s = t["align.resid.harmful.mean"], t["align.resid.harmless.mean"]
        out = min(layer + 1, resid_h.shape[0] - 1)  # the next layer's input is this layer's output
        d = resid_h[out] - resid_s[out]
        d = d / d.norm().clamp(min=1e-12)
        gain = d.to(weight.device, torch.float32) @ weight.float()  # [channels]
        shift = (t[f"align.{site}.harmful.mean"][layer] - t[f"align.{site}.harmless.mean"][layer]).to(gain.device)
        return (gain * shift).abs().cpu()

    @staticmethod
    def _importance(site, layer, weight, t, subset) -> torch.Tensor:
        sq = t[f"align.{site}.{subset}.sq_mean"][layer] if subset else t[f"{site}.sq_mean"][layer]
        return wanda_sp(sq.to(weight.device), weight).cpu()

    @staticmethod
    def _setdiff(safety: torch.Tensor, utility: torch.Tensor, n: int) -> torch.Tensor:
        """Top-2n by safety importance that are not in the top-2n by utility, best n of them."""
        if n == 0:
            return torch.empty(0, dtype=torch.long)
        pool = min(len(safety), 2 * n)
        cand = top_k(safety, pool)
        util_top = set(top_k(utility, pool).tolist())
        diff = torch.tensor([c for c in cand.tolist() if c not in util_top], dtype=torch.long)
        if not len(diff):
            return diff
        return diff[top_k(safety[diff], min(n, len(diff)))]

    # -- per batch --------------------------------------------------------------------------
    def watch_layers(self) -> set[int]:
        return {self.gate_layer} if self.aapp.gate in ("direction", "kl") else set()

    def begin_batch(self) -> None:
        self._fired = {"always": True, "never": False}.get(self.aapp.gate, False)
        self._score = float("nan")
        self.last_sample_scores = None
        if self.forced is not None:
            self._fired = self.forced
        self._batches += 1

    def sample_scores(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Gate score per sample from the gate layer's input residual; > 0 means 'closer to harmful'."""
        m = counted_tokens(token_mask, f"last:{self.n_post}").to(x.dtype)[..., None]
        feats = ((x * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()[:, None, :]  # [B, 1, D]
        i, s = self.gate_layer, self._gate_stats
        if self.aapp.gate == "direction":
            raw = direction_scores(feats, s["harmful.mean"][i : i + 1], s["harmless.mean"][i : i + 1])
        else:
            raw = kl_scores(feats, s["harmful.energy"][i : i + 1], s["harmless.energy"][i : i + 1])
        threshold = self.calib.tensors[f"align.gate.{self.aapp.gate}.threshold"][i]
        self._last_feats = feats[:, 0]
        return raw[:, 0] - threshold

    def observe(self, layer: int, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        if layer != self.gate_layer or self.aapp.gate not in ("direction", "kl"):
            return
        scores = self.sample_scores(x, token_mask)
        self.last_sample_scores = scores
        self._score = float(scores.max())
        if self.forced is None:
            self._fired = bool((scores > 0).any())
        if self.aapp.refresh:
            self._refresh()

    def _refresh(self) -> None:
        """Every `refresh` batches, move the gate's harmful/harmless history toward batches it classed so."""
        self._seen["harmful" if self._fired else "harmless"].append(self._last_feats)
        if self._batches % self.aapp.refresh:
            return
        m = self.aapp.refresh_momentum
        i = self.gate_layer
        for kind, feats in self._seen.items():
            if feats:
                f = torch.cat(feats)
                for stat, value in (("mean", f.mean(0)), ("energy", f.square().mean(0))):
                    h = self._gate_stats[f"{kind}.{stat}"]
                    h[i] = m * h[i] + (1 - m) * value
        self._seen = {"harmful": [], "harmless": []}

    def select(self, ctx: LayerContext) -> Selection:
        heads, channels = self.channel_scores(ctx)
        if not self._fired:
            return self.finish(ctx, select_top(heads, channels, ctx.budget, ctx.geometry))
        crit = self.critical[ctx.layer]
        return self.finish(ctx, select_top(heads, channels, ctx.budget, ctx.geometry,
                                           protect_heads=crit.heads, protect_channels=crit.channels))

    @property
    def carries_state(self) -> bool:
        return self.aapp.refresh > 0

    @property
    def splits_batches(self) -> bool:
        """Per-sample gating needs the batch split by gate decision before generation."""
        return self.aapp.per_sample and self.aapp.gate in ("direction", "kl")

    def batch_info(self) -> dict:
        return {"gate": {"kind": self.aapp.gate, "fired": bool(self._fired),
                         "score": None if math.isnan(self._score) else self._score,
                         "layer": self.gate_layer}}

    def sample_info(self, batch_size: int) -> dict[str, list[dict]]:
        """Each prompt's own gate score (the batch's `score` is their max): held-out AUROC reads it."""
        scores = self.last_sample_scores
        if scores is None or len(scores) != batch_size:
            return {}
        return {"gate": [{"sample_score": float(v)} for v in scores]}
