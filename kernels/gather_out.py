"""Output-row gather: y = x @ W[idx, :].T (+ b[idx]) without materialising W[idx].

Used for q/k/v over kept heads (with Qwen's biases). Kept rows of a row-major W are contiguous, so
every load is a run along K. The same kernels, with GATED set, compute the fused gated MLP
up-projection act(x @ Wg[idx].T) * (x @ Wu[idx].T) (see gated_mlp.py): one pass over x feeds both
accumulators.

Output column j belongs to idx[j]. `gather_out` sorts idx so that W is read in address order and
writes each result back to its caller's column, so the result never depends on the order of idx.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aapp_kernels import _runtime as rt
from aapp_kernels.splitk import gate_up, splitk_finish, splitk_workspace, store_tile, sum_axis0


@triton.jit
def _row_gather_decode_kernel(
    x_ptr, w_ptr, w2_ptr, b_ptr, idx_ptr, col_ptr, y_ptr, ws_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_w2n, stride_w2k, stride_ym, stride_yn,
    stride_wp, stride_ws,
    GATED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SCATTER: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # Program (pid_n, pid_s): kept rows [pid_n*BLOCK_N, +BLOCK_N) over split pid_s of K.
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    mask_j = offs_j < N
    rows = tl.load(idx_ptr + offs_j, mask=mask_j, other=0)
    blocks_per_split = ((K + BLOCK_K - 1) // BLOCK_K + SPLIT_K - 1) // SPLIT_K
    k_start = pid_s * blocks_per_split * BLOCK_K
    k_end = tl.minimum(k_start + blocks_per_split * BLOCK_K, K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc2 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K  # splits are block-aligned, so K (often a multiple of 16) bounds them all
        mask_w = mask_k[:, None] & mask_j[None, :]
        # w: [BLOCK_K, BLOCK_N] = W[idx[j], k]
        w = tl.load(w_ptr + rows[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=mask_w, other=0.0)
        if GATED:
            w2 = tl.load(w2_ptr + rows[None, :] * stride_w2n + offs_k[:, None] * stride_w2k, mask=mask_w, other=0.0)
        if BLOCK_M == 1:
            xv = tl.load(x_ptr + offs_k * stride_xk, mask=mask_k, other=0.0).to(tl.float32)[:, None]
            acc += sum_axis0(w.to(tl.float32) * xv)[None, :]
            if GATED:
                acc2 += sum_axis0(w2.to(tl.float32) * xv)[None, :]
        else:
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                         mask=(offs_m[:, None] < M) & mask_k[None, :], other=0.0)
            if DOT_F32:
                acc = tl.dot(xt.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
                if GATED:
                    acc2 = tl.dot(xt.to(tl.float32), w2.to(tl.float32), acc2, input_precision="ieee")
            else:
                acc = tl.dot(xt, w, acc)
                if GATED:
                    acc2 = tl.dot(xt, w2, acc2)
    if SPLIT_K == 1:
        if GATED:
            acc = gate_up(acc, acc2, ACT)
        store_tile(y_ptr, acc, offs_m, offs_j, M, N, stride_ym, stride_yn, b_ptr, idx_ptr, col_ptr,
                   HAS_BIAS, SCATTER)
    else:
        mask = (offs_m[:, None] < M) & mask_j[None, :]
        ws = ws_ptr + pid_s * stride_ws + offs_m[:, None] * N + offs_j[None, :]
        tl.store(ws, acc, mask=mask)
        if GATED:
            tl.store(ws + stride_wp, acc2, mask=mask)


@triton.jit
def _row_gather_gemm_kernel(
    x_ptr, w_ptr, w2_ptr, b_ptr, idx_ptr, col_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_w2n, stride_w2k, stride_ym, stride_yn,
    GATED: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SCATTER: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped order: GROUP_M consecutive programs walk down M under the same W row tile (L2 reuse).
    pid = tl.program_id(0)
    grid_m = (M + BLOCK_M - 1) // BLOCK_M
    grid_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % group_size
    pid_n = (pid % (GROUP_M * grid_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_j = offs_j < N
    rows = tl.load(idx_ptr + offs_j, mask=mask_j, other=0)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc2 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        mask_w = mask_k[:, None] & mask_j[None, :]
        b = tl.load(w_ptr + rows[None, :] * stride_wn + offs_k[:, None] * stride_wk, mask=mask_w, other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            acc = tl.dot(a, b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        if GATED:
            b2 = tl.load(w2_ptr + rows[None, :] * stride_w2n + offs_k[:, None] * stride_w2k, mask=mask_w, other=0.0)
            if DOT_F32:
                acc2 = tl.dot(a, b2.to(tl.float32), acc2, input_precision="ieee")
            else:
                acc2 = tl.dot(a, b2, acc2)
    if GATED:
        acc = gate_up(acc, acc2, ACT)
    store_tile(y_ptr, acc, offs_m, offs_j, M, N, stride_ym, stride_yn, b_ptr, idx_ptr, col_ptr, HAS_BIAS, SCATTER)


def gather_out_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor
) -> torch.Tensor:
    """The plain-torch meaning: gather rows, fp32 matmul (+ bias), one rounding to x's dtype."""
    idx = idx.long()
    y = x.float() @ weight[idx].float().T
    if bias is not None:
        y = y + bias[idx].float()
    return y.to(x.dtype)


def gather_out(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    idx: torch.Tensor,
    *,
    sort: bool = True,
    out: torch.Tensor | None = None,
    config: rt.DecodeConfig | rt.GemmConfig | None = None,
) -> torch.Tensor:
    """y[..., len(idx)] = x @ weight[idx].T + bias[idx], column j for row idx[j].

    sort=True sorts idx for coalesced reads and scatters results back to the caller's order; pass
    sort=False when idx is already sorted. `out` is written in full; `config` skips tuning.
    """
    rt.check_operands("gather_out", x, [weight], idx)
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or bias.device != x.device):
        raise ValueError(
            f"gather_out: bias must be [{weight.shape[0]}] {x.dtype}, got {tuple(bias.shape)} {bias.dtype}"
        )
    return launch_rows("gather_out", x, (weight,), bias, idx, -1, sort=sort, out=out, config=config)


def launch_rows(
    name: str,
    x: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    bias: torch.Tensor | None,
    idx: torch.Tensor,
    activation: int,
    *,
    sort: bool,
    out: torch.Tensor | None,
    config: rt.DecodeConfig | rt.GemmConfig | None,
) -> torch.Tensor:
    """Shared by gather_out (one weight) and gated_up (two weights, activation >= 0)."""
    k_full = weights[0].shape[1]
    if x.shape[-1] != k_full:
        raise ValueError(f"{name}: x has {x.shape[-1]} columns, weight has {k_full}")
    n = idx.numel()
    lead = x.shape[:-1]
    if out is None:
        out = torch.empty((*lead, n), device=x.device, dtype=x.dtype)
    elif out.shape != (*lead, n) or out.dtype != x.dtype:
        raise ValueError(f"{name}: out must be {(*lead, n)} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    if out.numel() == 0:
        return out
    if k_full == 0:  # an empty reduction: bias alone, or act(0) * 0
        return out.copy_(bias[idx].expand_as(out)) if bias is not None else out.zero_()
    rt.check_runs_on(x.device, _row_gather_decode_kernel)

    out_cols = None
    if sort:
        idx, out_cols = torch.sort(idx)
    x2 = rt.flatten_rows(x)
    y2 = out.view(-1, n)
    _launch(x2, weights, bias, idx, out_cols, y2, activation, config)
    return out


def _launch(x, weights, bias, idx, out_cols, y, activation, config) -> None:
    m, k, n = x.shape[0], x.shape[1], idx.numel()
    w, w2 = weights[0], weights[-1]
    gated = activation >= 0
    flags = dict(
        GATED=gated, ACT=max(activation, 0), HAS_BIAS=bias is not None, SCATTER=out_cols is not None,
        DOT_F32=rt.dot_in_f32(x.dtype, _row_gather_decode_kernel),
    )
    interp = rt.interpreted(_row_gather_decode_kernel)
    b_arg = bias if bias is not None else w
    col_arg = out_cols if out_cols is not None else idx

    if (config is None and m <= rt.DECODE_MAX_ROWS) or isinstance(config, rt.DecodeConfig):
        if m > rt.DECODE_MAX_ROWS:
            raise ValueError(f"decode launch takes at most {rt.DECODE_MAX_ROWS} rows, got {m}")
        block_m = rt.block_m_for_decode(m)

        def run(c: rt.DecodeConfig) -> None:
            split = c.split_k > 1
            ws = splitk_workspace(len(weights), c.split_k, m, n, x.device) if split else y
            _row_gather_decode_kernel[(triton.cdiv(n, c.block_n), c.split_k)](
                x, w, w2, b_arg, idx, col_arg, y, ws,
                m, n, k,
                x.stride(0), x.stride(1), w.stride(0), w.stride(1), w2.stride(0), w2.stride(1),
                y.stride(0), y.stride(1),
                ws.stride(0) if split else 0, ws.stride(1) if split else 0,
                **flags, BLOCK_M=block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, SPLIT_K=c.split_k,
                num_warps=c.num_warps, num_stages=c.num_stages,
            )
            if split:
                splitk_finish(ws, y, bias=bias, idx=idx, out_cols=out_cols, activation=activation)

        configs = [config] if config is not None else rt.decode_configs(m, n, k, x.device, interp)
    else:

        def run(c: rt.GemmConfig) -> None:
            grid = (triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n),)
            _row_gather_gemm_kernel[grid](
                x, w, w2, b_arg, idx, col_arg, y,
                m, n, k,
                x.stride(0), x.stride(1), w.stride(0), w.stride(1), w2.stride(0), w2.stride(1),
                y.stride(0), y.stride(1),
                **flags, BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                num_warps=c.num_warps, num_stages=c.num_stages,
            )

        configs = [config] if config is not None else rt.gemm_configs(m, n, k, x.device, interp, gated=gated)
    key = ("rows", gated, rt.m_bucket(m), n, k, x.dtype, w.stride(), bias is not None, out_cols is not None,
           x.device)
    run(rt.pick_config(key, configs, run))
