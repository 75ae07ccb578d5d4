"""The benchmarks' one timing runner: warm-up rounds, timed repeats, device sync, medians and percentiles.

    runs = rounds(configs, lambda c: run_config(c), warmup=1, repeats=5, rotate=True)
    prefill = summary([r["prefill_s"] for r in runs["dense"]])   # {"median", "iqr", "p10", "p90", "all"}

    with stopwatch("cuda") as lap:          # synchronizes before it starts and before it stops
        model(ids)
    lap.seconds

    kernel_ms(fn, device)                   # a microbenchmark's median milliseconds

Every configuration of a round runs before the next round starts, so a slow drift of the machine
(another process, thermal throttling) touches every configuration alike; `rotate` also changes
which runs first, so none always runs on cold caches or after the others freed memory.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


def sync(device: Any) -> None:
    """Wait for the device's queued work, so a clock read measures it (a no-op off CUDA)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Lap:
    seconds: float = 0.0


@contextmanager
def stopwatch(device: Any = "cpu") -> Iterator[Lap]:
    """Wall seconds of the block, the device's queued work included."""
    lap = Lap()
    sync(device)
    t0 = time.perf_counter()
    yield lap
    sync(device)
    lap.seconds = time.perf_counter() - t0


def rounds(configs: Sequence[K], run: Callable[[K], R], *, warmup: int, repeats: int, rotate: bool = False,
           on_run: Callable[[K, R, bool], None] | None = None) -> dict[K, list[R]]:
    """`run(config)` for every config, `warmup` untimed rounds then `repeats` kept ones: {config: results}.

    `on_run(config, result, warm)` sees every run as it ends (progress lines), warm-up ones too.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be at least 0 and repeats at least 1, got {warmup} and {repeats}")
    kept: dict[K, list[R]] = {c: [] for c in configs}
    for i in range(-warmup, repeats):
        shift = i % len(configs) if rotate and configs else 0
        for config in list(configs[shift:]) + list(configs[:shift]):
            result = run(config)
            if on_run is not None:
                on_run(config, result, i < 0)
            if i >= 0:
                kept[config].append(result)
    return kept


def summary(xs: Sequence[float]) -> dict[str, Any]:
    """Median, interquartile range and the 10th/90th percentiles of repeated timings, with the timings."""
    xs = list(xs)
    if not xs:
        raise ValueError("no timings to summarize")
    if len(xs) == 1:
        quartiles, deciles = [xs[0]] * 3, [xs[0]] * 9
    else:
        quartiles = statistics.quantiles(xs, n=4, method="inclusive")
        deciles = statistics.quantiles(xs, n=10, method="inclusive")
    return {"median": statistics.median(xs), "iqr": quartiles[2] - quartiles[0], "p10": deciles[0],
            "p90": deciles[-1], "all": xs}


def kernel_timer_name(device: Any) -> str:
    import torch

    return "triton.testing.do_bench median" if torch.device(device).type == "cuda" else "torch.utils.benchmark median"


def kernel_ms(fn: Callable[[], Any], device: Any) -> float:
    """Median milliseconds of a short call: do_bench on CUDA (L2 flushed before each call), else
    torch.utils.benchmark, which picks its own repeat count for at least 50 ms of runs."""
    import torch

    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    from torch.utils.benchmark import Timer as TorchTimer

    return TorchTimer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.05).median * 1e3
