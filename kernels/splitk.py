"""The epilogue every kernel shares, and the reduction that finishes a split-K launch.

A split-K decode launch writes fp32 partial sums `ws[plane, split, m, j]` (plane 1 holds the up
projection of the gated MLP) instead of outputs; `splitk_finish` sums the splits in a fixed order
(deterministic, no atomics, no zero-fill) and applies the same epilogue a non-split launch applies
in-kernel: bias[idx[j]], act(gate) * up, the cast, and the scatter of column j to out_cols[j].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aapp_kernels import activations

# The kernels call only triton.language builtins and our own @triton.jit helpers, never the library's
# @jit helpers (tl.sum, tl.cdiv, tl.zeros): those are decorated when triton is first imported, and if
# that was before TRITON_INTERPRET=1 (torch._dynamo imports triton) the interpreter cannot call them.


@triton.jit
def sum_axis0(x):
    """tl.sum(x, axis=0), spelled as the builtin reduce it wraps. The interpreter recognises this
    combine function and sums with numpy without calling it; any other one it calls per element."""
    return tl.reduce(x, 0, tl.standard._sum_combine)


@triton.jit
def gate_up(g, u, ACT: tl.constexpr):
    """act(g) * u in fp32 for ACT, an `activations` code (tests/kernels/test_activations.py holds each code
    to its torch function). Both activations are x * sigmoid(c(x)): 0.5(1 + tanh z) == sigmoid(2z)."""
    if ACT == 0:
        z = g
    else:
        z = 1.5957691216057308 * (g + 0.044715 * g * g * g)  # 2 * sqrt(2 / pi) * (...)
    # Clamped so exp stays finite (the interpreter warns on overflow); below -88 the factor is < 1e-38.
    return g / (1.0 + tl.exp(-tl.maximum(z, -88.0))) * u


@triton.jit
def store_tile(y_ptr, acc, offs_m, offs_j, M, N, stride_ym, stride_yn, bias_ptr, idx_ptr, col_ptr,
               HAS_BIAS: tl.constexpr, SCATTER: tl.constexpr):
    """Add bias[idx[j]] (fp32), cast, and write column j to out column col[j] (or j)."""
    mask_m = offs_m < M
    mask_j = offs_j < N
    if HAS_BIAS:
        rows = tl.load(idx_ptr + offs_j, mask=mask_j, other=0)
        acc += tl.load(bias_ptr + rows, mask=mask_j, other=0.0).to(tl.float32)[None, :]
    if SCATTER:
        cols = tl.load(col_ptr + offs_j, mask=mask_j, other=0)
    else:
        cols = offs_j
    ptrs = y_ptr + offs_m[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_j[None, :])


@triton.jit
def _splitk_finish_kernel(
    ws_ptr, y_ptr, bias_ptr, idx_ptr, col_ptr,
    M, N,
    stride_wp, stride_ws, stride_wm,
    stride_ym, stride_yn,
    SPLIT_K: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, SCATTER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_j[None, :] < N)
    ptrs = ws_ptr + offs_m[:, None] * stride_wm + offs_j[None, :]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ptrs + s * stride_ws, mask=mask, other=0.0)
    if GATED:
        up = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for s in tl.static_range(SPLIT_K):
            up += tl.load(ptrs + stride_wp + s * stride_ws, mask=mask, other=0.0)
        acc = gate_up(acc, up, ACT)
    store_tile(y_ptr, acc, offs_m, offs_j, M, N, stride_ym, stride_yn, bias_ptr, idx_ptr, col_ptr,
               HAS_BIAS, SCATTER)


def splitk_workspace(planes: int, split_k: int, m: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.empty((planes, split_k, m, n), device=device, dtype=torch.float32)


def splitk_finish(
    ws: torch.Tensor,
    out: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    out_cols: torch.Tensor | None = None,
    activation: int = -1,
) -> None:
    """out[m, out_cols[j]] = epilogue(sum_s ws[:, s, m, j]); activation >= 0 means gated (2 planes)."""
    planes, split_k, m, n = ws.shape
    if n == 0 or m == 0:
        return
    block_n = 128
    dummy = ws  # pointer arguments a constexpr flag switches off are never read
    _splitk_finish_kernel[(triton.cdiv(n, block_n),)](
        ws, out, bias if bias is not None else dummy, idx if idx is not None else dummy,
        out_cols if out_cols is not None else dummy,
        m, n,
        ws.stride(0), ws.stride(1), ws.stride(2),
        out.stride(0), out.stride(1),
        SPLIT_K=split_k, GATED=activation >= 0, ACT=max(activation, 0),
        HAS_BIAS=bias is not None, SCATTER=out_cols is not None,
        BLOCK_M=max(triton.next_power_of_2(m), 1), BLOCK_N=block_n,
    )


def splitk_finish_reference(
    ws: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    idx: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """fp32 result in kept order (the scatter is the caller's)."""
    acc = ws[0].sum(0)
    if activation is not None:
        acc = activations.lookup(activation).fn(acc) * ws[1].sum(0)
    if bias is not None:
        acc = acc + bias[idx].float()
    return acc
