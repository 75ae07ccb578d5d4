"""Input-channel gather: y = x[..., idx] @ W[:, idx].T without materialising W[:, idx].

Used for o_proj over kept heads and down_proj over kept MLP channels. The reduction runs over the
kept channels j: y[m, n] = sum_j x[m, xcol(j)] * W[n, idx[j]].

x may be compact (len(idx) columns, column j belongs to channel idx[j]) or full width (K columns, read
at idx). Compact wins when both apply (len(idx) == K). `gather_in` sorts idx so that W is read in
address order; for compact x it then reads x's columns through the same permutation, so the result
never depends on the order of idx. W may be row-major (nn.Linear's layout: kept heads are contiguous
runs) or K-major (`W.t().contiguous().t()`: every kept channel is a contiguous row of W.T, the layout
to use for down_proj, where channels are scattered).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aapp_kernels import _runtime as rt
from aapp_kernels.splitk import splitk_finish, splitk_workspace, store_tile, sum_axis0


@triton.jit
def _gather_in_decode_kernel(
    x_ptr, w_ptr, idx_ptr, xcol_ptr, y_ptr, ws_ptr,
    M, N, KK,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn, stride_ws,
    X_GATHER: tl.constexpr, DOT_F32: tl.constexpr, RUN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # Program (pid_n, pid_s): outputs [pid_n*BLOCK_N, +BLOCK_N) over split pid_s of the kept channels.
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    blocks_per_split = ((KK + BLOCK_K - 1) // BLOCK_K + SPLIT_K - 1) // SPLIT_K
    j_start = pid_s * blocks_per_split * BLOCK_K
    j_end = tl.minimum(j_start + blocks_per_split * BLOCK_K, KK)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for j0 in range(j_start, j_end, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mask_j = offs_j < KK  # splits are block-aligned, so KK (often a multiple of 16) bounds them all
        cols = tl.load(idx_ptr + offs_j, mask=mask_j, other=0)
        if RUN > 1:  # idx is made of aligned runs of RUN channels (kept heads): vector loads along K
            cols = tl.max_contiguous(tl.multiple_of(cols, RUN), RUN)
        if X_GATHER:
            xcols = tl.load(xcol_ptr + offs_j, mask=mask_j, other=0)
        else:
            xcols = offs_j
        # w: [BLOCK_K, BLOCK_N] = W[n, idx[j]]
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + cols[:, None] * stride_wk,
                    mask=mask_j[:, None] & mask_n[None, :], other=0.0)
        if BLOCK_M == 1:
            xv = tl.load(x_ptr + xcols * stride_xk, mask=mask_j, other=0.0)
            acc += sum_axis0(w.to(tl.float32) * xv.to(tl.float32)[:, None])[None, :]
        else:
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + xcols[None, :] * stride_xk,
                         mask=(offs_m[:, None] < M) & mask_j[None, :], other=0.0)
            if DOT_F32:
                acc = tl.dot(xt.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(xt, w, acc)
    if SPLIT_K == 1:
        store_tile(y_ptr, acc, offs_m, offs_n, M, N, stride_ym, stride_yn, y_ptr, y_ptr, y_ptr, False, False)
    else:
        ws = ws_ptr + pid_s * stride_ws + offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws, acc, mask=(offs_m[:, None] < M) & mask_n[None, :])


@triton.jit
def _gather_in_gemm_kernel(
    x_ptr, w_ptr, idx_ptr, xcol_ptr, y_ptr,
    M, N, KK,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    X_GATHER: tl.constexpr, DOT_F32: tl.constexpr, RUN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped order: GROUP_M consecutive programs walk down M under the same W column tile (L2 reuse).
    pid = tl.program_id(0)
    grid_m = (M + BLOCK_M - 1) // BLOCK_M
    grid_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % group_size
    pid_n = (pid % (GROUP_M * grid_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for j0 in range(0, KK, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mask_j = offs_j < KK
        cols = tl.load(idx_ptr + offs_j, mask=mask_j, other=0)
        if RUN > 1:  # idx is made of aligned runs of RUN channels (kept heads): vector loads along K
            cols = tl.max_contiguous(tl.multiple_of(cols, RUN), RUN)
        if X_GATHER:
            xcols = tl.load(xcol_ptr + offs_j, mask=mask_j, other=0)
        else:
            xcols = offs_j
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + xcols[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_j[None, :], other=0.0)
        b = tl.load(w_ptr + offs_n[None, :] * stride_wn + cols[:, None] * stride_wk,
                    mask=mask_j[:, None] & mask_n[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    store_tile(y_ptr, acc, offs_m, offs_n, M, N, stride_ym, stride_yn, y_ptr, y_ptr, y_ptr, False, False)


def gather_in_reference(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The plain-torch meaning: gather x and W, fp32 matmul, one rounding to x's dtype."""
    idx = idx.long()
    x_kept = x if x.shape[-1] == idx.numel() else x[..., idx]
    return (x_kept.float() @ weight[:, idx].float().T).to(x.dtype)


def aligned_run(idx: torch.Tensor, longest: int = 16) -> int:
    """The largest power of two r <= longest such that idx is a sequence of runs a, a+1, ..., a+r-1
    with a % r == 0 (kept heads give head_dim-long runs). One host synchronisation.

    With it the kernels may load r neighbouring channels of a row-major W as one vector; without it
    (r = 1) every element is a separate 2-byte load. Sorted idx keeps its runs.
    """
    k = idx.numel()
    candidates = [r for r in (16, 8, 4, 2) if r <= longest and k and k % r == 0]
    if not candidates:
        return 1
    checks = []
    for r in candidates:
        groups = idx.view(-1, r)
        steps = torch.arange(r, device=idx.device, dtype=idx.dtype)
        checks.append(((groups[:, 0] % r == 0) & (groups - groups[:, :1] == steps).all(1)).all())
    flags = torch.stack(checks).tolist()
    return next((r for r, ok in zip(candidates, flags, strict=True) if ok), 1)


def gather_in(
    x: torch.Tensor,
    weight: torch.Tensor,
    idx: torch.Tensor,
    *,
    sort: bool = True,
    run: int | None = None,
    out: torch.Tensor | None = None,
    config: rt.DecodeConfig | rt.GemmConfig | None = None,
) -> torch.Tensor:
    """y[..., N] = x_kept @ weight[:, idx].T with x [..., len(idx)] (compact) or [..., K] (full).

    sort=True sorts idx for coalesced reads (one small sort per call); pass sort=False when idx is
    already sorted, as the prepared backends do. `run` is `aligned_run(idx)` (a promise the kernel
    relies on; None computes it, with a synchronisation). `out` [..., N] is written in full;
    `config` skips tuning (tests force split-K with it).
    """
    rt.check_operands("gather_in", x, [weight], idx)
    n, k_full = weight.shape
    k = idx.numel()
    if x.shape[-1] not in (k, k_full):
        raise ValueError(f"gather_in: x has {x.shape[-1]} columns; expected {k} (compact) or {k_full} (full)")
    compact = x.shape[-1] == k
    lead = x.shape[:-1]
    if out is None:
        out = torch.empty((*lead, n), device=x.device, dtype=x.dtype)
    elif out.shape != (*lead, n) or out.dtype != x.dtype:
        raise ValueError(f"gather_in: out must be {(*lead, n)} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    if k == 0 or out.numel() == 0:
        return out.zero_()
    rt.check_runs_on(x.device, _gather_in_decode_kernel)

    x_cols = None
    if sort:
        idx, order = torch.sort(idx)
        x_cols = order if compact else idx
    elif not compact:
        x_cols = idx
    if run is None:
        run = aligned_run(idx)
    x2 = rt.flatten_rows(x)
    y2 = out.view(-1, n)
    _launch(x2, weight, idx, x_cols, y2, run, config)
    return out


def _launch(x, weight, idx, x_cols, y, run_len, config) -> None:
    m, kk, n = x.shape[0], idx.numel(), weight.shape[0]
    interp = rt.interpreted(_gather_in_decode_kernel)
    dot_f32 = rt.dot_in_f32(x.dtype, _gather_in_decode_kernel)
    x_gather = x_cols is not None
    xcol_arg = x_cols if x_gather else idx

    if (config is None and m <= rt.DECODE_MAX_ROWS) or isinstance(config, rt.DecodeConfig):
        if m > rt.DECODE_MAX_ROWS:
            raise ValueError(f"decode launch takes at most {rt.DECODE_MAX_ROWS} rows, got {m}")
        block_m = rt.block_m_for_decode(m)

        def run(c: rt.DecodeConfig) -> None:
            ws = splitk_workspace(1, c.split_k, m, n, x.device) if c.split_k > 1 else y
            _gather_in_decode_kernel[(triton.cdiv(n, c.block_n), c.split_k)](
                x, weight, idx, xcol_arg, y, ws,
                m, n, kk,
                x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
                ws.stride(1) if c.split_k > 1 else 0,
                X_GATHER=x_gather, DOT_F32=dot_f32, RUN=run_len,
                BLOCK_M=block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, SPLIT_K=c.split_k,
                num_warps=c.num_warps, num_stages=c.num_stages,
            )
            if c.split_k > 1:
                splitk_finish(ws, y)

        configs = [config] if config is not None else rt.decode_configs(m, n, kk, x.device, interp)
    else:

        def run(c: rt.GemmConfig) -> None:
            grid = (triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n),)
            _gather_in_gemm_kernel[grid](
                x, weight, idx, xcol_arg, y,
                m, n, kk,
                x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
                X_GATHER=x_gather, DOT_F32=dot_f32, RUN=run_len,
                BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
                num_warps=c.num_warps, num_stages=c.num_stages,
            )

        configs = [config] if config is not None else rt.gemm_configs(m, n, kk, x.device, interp)
    key = ("gather_in", rt.m_bucket(m), n, kk, x.dtype, weight.stride(), x_gather, run_len, x.device)
    run(rt.pick_config(key, configs, run))
