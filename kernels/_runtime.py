"""What the kernel launchers share: where Triton can run, launch configs, and a small autotuner.

Triton chooses between compiling and interpreting when a kernel is *decorated*, i.e. when its module
is imported (TRITON_INTERPRET=1 at that moment means interpreted). So the mode is read off the kernel
objects, never off the environment at call time, which may have changed since.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
from triton import knobs
from triton.runtime.jit import JITFunction

# Rows at or below this run the split-K GEMV (decode); above it the tiled GEMM (prefill). Beyond 32 rows
# a GEMV tile would hold more than one tensor-core tile of rows and the GEMM's M tiling wins.
DECODE_MAX_ROWS = 32

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class DecodeConfig:
    """Split-K GEMV launch: one program per (BLOCK_N outputs, 1/split_k of the reduction)."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class GemmConfig:
    """Tiled GEMM launch; group_m programs along M share a column of W tiles in L2."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


Config = TypeVar("Config", DecodeConfig, GemmConfig)

# Under the interpreter every program is Python, so one config with big blocks keeps tests fast while
# still leaving several tiles (and ragged edges) on the small test shapes.
_INTERPRET_DECODE = DecodeConfig(block_n=32, block_k=64)
_INTERPRET_GEMM = GemmConfig(block_m=32, block_n=32, block_k=64, group_m=2)


def interpreted(kernel: object) -> bool:
    return not isinstance(kernel, JITFunction)


def kernels_interpreted() -> bool:
    """The mode the kernel modules were imported in or, when none is imported yet, would be."""
    # Looked up rather than imported: importing here would fix the mode as a side effect.
    splitk = sys.modules.get("aapp_kernels.splitk")
    if splitk is not None:
        return interpreted(splitk._splitk_finish_kernel)
    return bool(knobs.runtime.interpret)


def triton_runs_on(device: torch.device, is_interpreted: bool) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and is_interpreted


def check_runs_on(device: torch.device, kernel: object) -> None:
    if not triton_runs_on(device, interpreted(kernel)):
        raise RuntimeError(
            f"Triton kernels cannot run on {device}: they need a CUDA device, or TRITON_INTERPRET=1 "
            "set before the kernels package is imported"
        )


def dot_in_f32(dtype: torch.dtype, kernel: object) -> bool:
    """Whether tl.dot runs on fp32 operands with IEEE products rather than on the input dtype.

    fp32 inputs: yes, or they would get TF32's 10-bit products. Interpreted: yes, because the
    interpreter's tl.dot multiplies bf16 bit patterns as integers (upcasting is exact).
    """
    return dtype == torch.float32 or interpreted(kernel)


def block_m_for_decode(m: int) -> int:
    # One row: a multiply-and-reduce GEMV. More: a tl.dot, whose M side must be >= 16 on tensor cores.
    return 1 if m == 1 else max(16, 1 << (m - 1).bit_length())


def decode_configs(m: int, n_out: int, k_red: int, device: torch.device, is_interpreted: bool) -> list[DecodeConfig]:
    if is_interpreted:
        return [_INTERPRET_DECODE]
    if m == 1:
        tiles = [(16, 512), (32, 256), (64, 128), (128, 64)]
    else:
        tiles = [(32, 128), (64, 128), (64, 64), (128, 64)]
    sms = sm_count(device)
    configs = []
    for block_n, block_k in tiles:
        programs = math.ceil(n_out / block_n)
        k_blocks = math.ceil(max(k_red, 1) / block_k)
        for split in (1, 2, 4, 8):
            # Split the reduction only to fill the machine, and never below two K blocks per split.
            if split > 1 and (programs * split > 4 * sms or k_blocks < 2 * split):
                continue
            for warps in (4, 8) if block_n * block_k >= 8192 else (4,):
                configs.append(DecodeConfig(block_n, block_k, split, warps, 4))
    return configs


def gemm_configs(
    m: int, n_out: int, k_red: int, device: torch.device, is_interpreted: bool, *, gated: bool = False
) -> list[GemmConfig]:
    if is_interpreted:
        return [_INTERPRET_GEMM]
    configs = [
        GemmConfig(128, 128, 64, 8, 8, 3),
        GemmConfig(128, 128, 64, 8, 4, 4),
        GemmConfig(64, 128, 64, 8, 4, 4),
        GemmConfig(128, 64, 64, 8, 4, 4),
        GemmConfig(64, 64, 64, 8, 4, 4),
    ]
    if gated:
        # Two fp32 accumulators: 128x128 over 4 warps spills (sm_90 AOT compile, 520 B of stack).
        configs.remove(GemmConfig(128, 128, 64, 8, 4, 4))
    else:
        configs.append(GemmConfig(128, 256, 64, 8, 8, 3))
    if m <= 128:
        configs = [c for c in configs if c.block_m <= max(64, 1 << (m - 1).bit_length())]
    return configs


_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


_BEST: dict[tuple, object] = {}


def pick_config(key: tuple, configs: Sequence[Config], launch: Callable[[Config], object]) -> Config:
    """Time every config once per key (full launch, split-K finish included) and keep the fastest.

    Our own loop rather than triton.autotune: a split-K config costs a second (reduction) launch that
    triton.autotune would not see. Tuning synchronises, so warm a shape up before CUDA-graph capture.
    """
    if len(configs) == 1:
        return configs[0]
    best = _BEST.get(key)
    if best is None:
        from triton.testing import do_bench

        timings = []
        for config in configs:
            try:
                timings.append(do_bench(lambda c=config: launch(c), warmup=5, rep=20, return_mode="median"))
            except Exception as exc:  # a config the device cannot fit (shared memory, registers)
                if "OutOfResources" not in type(exc).__name__ and "out of resource" not in str(exc).lower():
                    raise
                timings.append(math.inf)
        best = configs[min(range(len(configs)), key=timings.__getitem__)]
        _BEST[key] = best
    return best  # type: ignore[return-value]


def m_bucket(m: int) -> int:
    """Tuning key for the row count: exact for decode, power-of-two buckets for prefill."""
    return m if m <= DECODE_MAX_ROWS else min(1 << (m - 1).bit_length(), 8192)


def flatten_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [M, C] without a copy when the layout allows it."""
    return x.reshape(-1, x.shape[-1])


def check_operands(name: str, x: torch.Tensor, weights: Sequence[torch.Tensor], idx: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: x must be float16, bfloat16 or float32, got {x.dtype}")
    for w in weights:
        if w.dim() != 2:
            raise ValueError(f"{name}: weights must be 2-D [N, K], got shape {tuple(w.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"{name}: weight {w.dtype} on {w.device} does not match x {x.dtype} on {x.device}")
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: idx must be a 1-D int32/int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
    if idx.device != x.device:
        raise ValueError(f"{name}: idx on {idx.device} but x on {x.device}")
