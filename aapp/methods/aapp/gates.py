"""AAPP's risk gates: does this input look closer to harmful than to harmless history?

A residual gate scores each prompt from a layer's block input, averaged over the chat
template's post-instruction tokens, against the harmful and harmless statistics of that
layer; a score above the layer's calibrated threshold fires. Fixed gates always or never fire.

  direction  projection on the difference-of-means refusal direction (Arditi et al. 2024),
             centred between the two means
  kl         the paper's: KL(input || harmless) - KL(input || harmful) of the residual's
             channel-energy distribution
  always | never

`fit_gates` calibrates every residual gate at every layer (in-sample AUROC and the threshold
that maximises balanced accuracy); the calibration file stores the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aapp import stats
from aapp.calibration.alignment import PromptSetPass
from aapp.calibration.store import GateFit, SiteStats


@dataclass(frozen=True)
class Gate:
    name: str
    fires: bool | None = None  # a fixed gate's answer; None for gates that read the residual

    @property
    def reads_residual(self) -> bool:
        return self.fires is None

    def scores(self, features: torch.Tensor, harmful: SiteStats, harmless: SiteStats) -> torch.Tensor:
        """Raw scores [N, L] of per-prompt features [N, L, D] against per-layer residual statistics
        ([L, D] each); larger means closer to harmful."""
        raise NotImplementedError(f"the {self.name} gate reads no residual")


class DirectionGate(Gate):
    def scores(self, features, harmful, harmless):
        return direction_scores(features, harmful.mean, harmless.mean)


class KLGate(Gate):
    def scores(self, features, harmful, harmless):
        return kl_scores(features, harmful.sq_mean, harmless.sq_mean)


GATES: dict[str, Gate] = {g.name: g for g in (DirectionGate("direction"), KLGate("kl"),
                                               Gate("always", fires=True), Gate("never", fires=False))}


def direction_scores(features: torch.Tensor, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> torch.Tensor:
    """Projection of per-prompt residuals [N, L, D] on each layer's unit refusal direction -> [N, L]."""
    d = harmful_mean - harmless_mean
    d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    centre = (harmful_mean + harmless_mean) / 2
    return ((features - centre) * d).sum(-1)


def channel_distribution(energy: torch.Tensor) -> torch.Tensor:
    """Normalise per-channel energy [..., D] into a distribution over channels."""
    e = energy.float().clamp(min=0) + 1e-8
    return e / e.sum(-1, keepdim=True)


def kl_scores(features: torch.Tensor, harmful_energy: torch.Tensor, harmless_energy: torch.Tensor) -> torch.Tensor:
    """KL(input || safe) - KL(input || harmful) per prompt and layer -> [N, L]; > 0 means closer to harmful."""
    p = channel_distribution(features.square())
    qh, qs = channel_distribution(harmful_energy), channel_distribution(harmless_energy)
    kl_s = (p * (p.log() - qs.log())).sum(-1)
    kl_h = (p * (p.log() - qh.log())).sum(-1)
    return kl_s - kl_h


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    value = stats.auroc(pos.tolist(), neg.tolist())
    return float("nan") if value is None else value


def best_threshold(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """The cut that maximises balanced accuracy (midpoint between neighbouring scores)."""
    scores = torch.cat([pos, neg]).sort().values
    cuts = torch.cat([scores[:1] - 1, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1])
    tpr = (pos[None, :] > cuts[:, None]).float().mean(1)
    tnr = (neg[None, :] <= cuts[:, None]).float().mean(1)
    return float(cuts[torch.argmax(tpr + tnr)])


def fit_gates(harmful: PromptSetPass, harmless: PromptSetPass) -> dict[str, GateFit]:
    """Every residual gate's in-sample AUROC and threshold at every layer."""
    fits = {}
    for name, gate in GATES.items():
        if not gate.reads_residual:
            continue
        sh, ss = (gate.scores(p.features, harmful.stats.resid, harmless.stats.resid) for p in (harmful, harmless))
        layers = range(sh.shape[1])
        fits[name] = GateFit(auroc=torch.tensor([auroc(sh[:, i], ss[:, i]) for i in layers]),
                             threshold=torch.tensor([best_threshold(sh[:, i], ss[:, i]) for i in layers]))
    return fits
