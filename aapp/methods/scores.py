"""Channel importance scores, as pure functions of activation statistics and weights.

Every score here is per input channel of o_proj / down_proj (W: [out, channels]);
attention heads sum the scores of their head_dim channels.
"""

from __future__ import annotations

import torch


def fuse(probe: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Probe Pruning's history-informed fusion, per channel.

    p = P / (P + H);  C = (1 - p) * H + p * P.  The larger of the two statistics
    dominates, so a channel the probe sees firing is not pruned on stale history,
    and a channel the small probe happens to miss is kept on its history.
    """
    p, h = probe.float(), history.float()
    total = p + h
    w = torch.where(total > 0, p / total.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(total))
    return (1 - w) * h + w * p


def ppsp(fused: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PPsp: I_k = C_k * || W[:, k]^2 ||_2 (the L2 norm over output rows of the squared column)."""
    w2 = weight.float().square()
    return fused.float() * torch.linalg.vector_norm(w2, ord=2, dim=0)


def wanda_sp(sq_mean: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Wanda-sp (structured Wanda): sum_i |W_ik| * ||X_k||, with ||X_k|| = sqrt(E[x_k^2])."""
    return weight.float().abs().sum(0) * sq_mean.float().clamp(min=0).sqrt()


def flap(variance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation metric: Var(x_k) * ||W[:, k]||_2^2.

    A channel whose input barely fluctuates can be replaced by its mean (see
    `flap_compensation`), so it is cheap to prune whatever its magnitude.
    """
    return variance.float() * weight.float().square().sum(0)


def flap_compensation(mean: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation: the pruned channels' mean contribution, W[:, pruned] @ mean[pruned]."""
    pruned_mean = mean.to(weight.device, weight.dtype).clone()
    pruned_mean[kept.to(weight.device)] = 0
    # A mat-vec in the weight's dtype on the zeroed mean, not a gather of the pruned columns or
    # a float copy of W: dynamic methods compensate every batch, and reading W once is cheapest.
    return (weight @ pruned_mean).float()


def per_head(channel_scores: torch.Tensor, head_dim: int, norm: str = "sum") -> torch.Tensor:
    """Reduce channel scores over each head's head_dim consecutive channels: their sum, or
    their L2 norm (`norm="l2"`, what the reference PP code takes)."""
    by_head = channel_scores.view(-1, head_dim)
    if norm == "l2":
        return torch.linalg.vector_norm(by_head, ord=2, dim=-1)
    if norm != "sum":
        raise ValueError(f"unknown head score reduction {norm!r}")
    return by_head.sum(-1)
