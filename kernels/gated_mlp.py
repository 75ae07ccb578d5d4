"""Fused gated MLP up-projection on kept channels: act(x @ Wg[idx].T) * (x @ Wu[idx].T).

SiLU for LLaMA and Qwen, tanh-GELU for Gemma. It is the output-row gather of gather_out.py run with two
weights: each program loads an x tile once, feeds a gate and an up accumulator (both fp32), and applies
act(gate) * up before the single rounding, so neither projection is ever written out. The kernels live
in gather_out.py behind their GATED flag; this file is the op's entry point and its reference.
"""

from __future__ import annotations

import torch

from aapp_kernels import _runtime as rt
from aapp_kernels import activations
from aapp_kernels.gather_out import launch_rows


def gated_up_reference(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str
) -> torch.Tensor:
    """The plain-torch meaning, in fp32 with one rounding to x's dtype."""
    idx = idx.long()
    g = x.float() @ w_gate[idx].float().T
    u = x.float() @ w_up[idx].float().T
    return (activations.lookup(activation).fn(g) * u).to(x.dtype)


def gated_up(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    idx: torch.Tensor,
    activation: str,
    *,
    sort: bool = True,
    out: torch.Tensor | None = None,
    config: rt.DecodeConfig | rt.GemmConfig | None = None,
) -> torch.Tensor:
    """y[..., len(idx)] = act(x @ w_gate[idx].T) * (x @ w_up[idx].T), column j for channel idx[j]."""
    code = activations.lookup(activation).code
    rt.check_operands("gated_up", x, [w_gate, w_up], idx)
    if w_gate.shape != w_up.shape:
        raise ValueError(f"gated_up: gate {tuple(w_gate.shape)} and up {tuple(w_up.shape)} differ")
    return launch_rows("gated_up", x, (w_gate, w_up), None, idx, code, sort=sort, out=out, config=config)
