"""The kernels as `torch.library` custom ops (namespace `aapp`), each with a fake implementation.

torch.compile treats each op as one opaque node: the fake implementation gives it shapes without
running Triton, so a pruned forward traces with `fullgraph=True`. The ops take idx as given (sorted by
the caller for speed; any order is correct) and never sort: sorting belongs to prepare time.
"""

from __future__ import annotations

import torch

from aapp_kernels.gated_mlp import gated_up
from aapp_kernels.gather_in import gather_in
from aapp_kernels.gather_out import gather_out


@torch.library.custom_op("aapp::gather_in", mutates_args=())
def gather_in_op(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, run: int = 1) -> torch.Tensor:
    """x [..., len(idx)] (compact) or [..., K] -> x_kept @ weight[:, idx].T  [..., N].

    run: `gather_in.aligned_run(idx)`, computed once at prepare time (1 is always safe).
    """
    return gather_in(x, weight, idx, sort=False, run=run)


@gather_in_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, run: int = 1) -> torch.Tensor:
    torch._check(x.shape[-1] == idx.shape[0] or x.shape[-1] == weight.shape[1])
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("aapp::gather_out", mutates_args=())
def gather_out_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor
) -> torch.Tensor:
    """x [..., K] -> x @ weight[idx].T + bias[idx]  [..., len(idx)]."""
    return gather_out(x, weight, bias, idx, sort=False)


@gather_out_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
    torch._check(x.shape[-1] == weight.shape[1])
    return x.new_empty((*x.shape[:-1], idx.shape[0]))


@torch.library.custom_op("aapp::gated_up", mutates_args=())
def gated_up_op(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str
) -> torch.Tensor:
    """x [..., K] -> act(x @ w_gate[idx].T) * (x @ w_up[idx].T)  [..., len(idx)]."""
    return gated_up(x, w_gate, w_up, idx, activation, sort=False)


@gated_up_op.register_fake
def _(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str) -> torch.Tensor:
    torch._check(x.shape[-1] == w_gate.shape[1])
    return x.new_empty((*x.shape[:-1], idx.shape[0]))
