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
    pruned = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    pruned[kept.to(weight.device)] = False
    return weight.float()[:, pruned] @ mean.float().to(weight.device)[pruned]


def per_head(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum channel scores over each head's head_dim consecutive channels."""
    return channel_scores.view(-1, head_dim).sum(-1)
