"""Compile every kernel variant for a GPU target without a GPU: `python -m aapp_kernels.aot [cuda:90]`.

The interpreter runs the kernels' Python, not Triton's compiler, so it cannot catch what only
compilation rejects (tl.dot shapes, layouts, shared memory). This compiles each variant the launchers
can issue, with the specialisations a real launch gets: unit strides as constants and multiples of
16 marked divisible, for bf16 at LLaMA-2-7B sizes. Run it without TRITON_INTERPRET.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from aapp_kernels import _runtime as rt
from aapp_kernels.gather_in import _gather_in_decode_kernel, _gather_in_gemm_kernel
from aapp_kernels.gather_out import _row_gather_decode_kernel, _row_gather_gemm_kernel
from aapp_kernels.splitk import _splitk_finish_kernel

# Argument values of a launch (ints) and which pointers hold indices or fp32 workspaces.
_M, _N, _K, _KK = 8192, 4096, 4096, 2048
_IN_ROW_MAJOR = dict(N=_N, KK=_KK, stride_xm=_KK, stride_xk=1, stride_wn=_K, stride_wk=1, stride_ym=_N, stride_yn=1,
                     stride_ws=_N)
_IN_K_MAJOR = dict(_IN_ROW_MAJOR, stride_wn=1, stride_wk=_N)
_ROWS = dict(N=_KK, K=_K, stride_xm=_K, stride_xk=1, stride_wn=_K, stride_wk=1, stride_w2n=_K, stride_w2k=1,
             stride_ym=_KK, stride_yn=1, stride_wp=_KK, stride_ws=_KK)
_FINISH = dict(N=_KK, stride_wp=_KK, stride_ws=_KK, stride_wm=_KK, stride_ym=_KK, stride_yn=1)
_INDEX_PTRS = {"idx_ptr", "xcol_ptr", "col_ptr"}


def _compile(kernel, target, ints: dict, consts: dict, num_warps: int, num_stages: int, fp32_ptrs=()):
    signature, constexprs, attrs = {}, dict(consts), {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*i64" if name in _INDEX_PTRS else "*fp32" if name in fp32_ptrs else "*bf16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ints[name] == 1:
            constexprs[name] = 1
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options={"num_warps": num_warps, "num_stages": num_stages})


def variants():
    """(name, kernel, ints, constexprs, num_warps, num_stages, fp32 pointers) for each launch shape."""
    gemm = rt.GemmConfig(128, 128, 64, 8, 8, 3)
    rows_flags = dict(ACT=0, HAS_BIAS=False, SCATTER=False, DOT_F32=False)
    for m in (1, 16):  # 32 rows differ from 16 only in BLOCK_M
        block_m = rt.block_m_for_decode(m)
        for split in (1, 2):
            ws = ("ws_ptr",) if split > 1 else ()
            decode = dict(BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=128, SPLIT_K=split)
            for layout, ints in (("row-major", _IN_ROW_MAJOR), ("K-major", _IN_K_MAJOR)):
                yield (f"gather_in decode m={m} split={split} {layout}", _gather_in_decode_kernel, dict(ints, M=m),
                       dict(decode, X_GATHER=False, DOT_F32=False, RUN=16 if layout == "row-major" else 1), 4, 4, ws)
            for gated in (False, True):
                flags = dict(rows_flags, GATED=gated, HAS_BIAS=not gated, SCATTER=not gated)
                yield (f"rows decode m={m} split={split} gated={gated}", _row_gather_decode_kernel, dict(_ROWS, M=m),
                       dict(decode, **flags), 4, 4, ws)
    tiles = dict(BLOCK_M=gemm.block_m, BLOCK_N=gemm.block_n, BLOCK_K=gemm.block_k, GROUP_M=gemm.group_m)
    for layout, ints in (("row-major", _IN_ROW_MAJOR), ("K-major", _IN_K_MAJOR)):
        yield (f"gather_in gemm {layout}", _gather_in_gemm_kernel, dict(ints, M=_M),
               dict(tiles, X_GATHER=True, DOT_F32=False, RUN=16 if layout == "row-major" else 1),
               gemm.num_warps, gemm.num_stages, ())
    for gated in (False, True):
        yield (f"rows gemm gated={gated}", _row_gather_gemm_kernel, dict(_ROWS, M=_M),
               dict(tiles, **dict(rows_flags, GATED=gated, HAS_BIAS=not gated)), gemm.num_warps, gemm.num_stages, ())
    yield ("splitk finish gated", _splitk_finish_kernel, dict(_FINISH, M=16),
           dict(SPLIT_K=4, GATED=True, ACT=1, HAS_BIAS=False, SCATTER=True, BLOCK_M=16, BLOCK_N=128), 4, 3, ("ws_ptr",))


def main(argv: list[str]) -> int:
    if rt.kernels_interpreted():
        print("kernels were decorated for the interpreter: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    backend, arch = (argv[0] if argv else "cuda:90").split(":")
    target = GPUTarget(backend, int(arch), 32)
    for name, kernel, ints, consts, warps, stages, fp32_ptrs in variants():
        compiled = _compile(kernel, target, ints, consts, warps, stages, fp32_ptrs)
        print(f"ok {name}: {compiled.metadata.shared} B shared")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
