"""Kernel tests run the Triton kernels on CPU in Triton's interpreter.

Triton picks interpret-or-compile when a kernel is decorated, i.e. when a `kernels.*` kernel module is
imported, so TRITON_INTERPRET is set here, at collection, before any test module imports one. It stays
set for the rest of the process; `aapp_kernels.backend` itself never imports Triton, so other tests are not
affected unless they ask for the triton backend. On a GPU machine, AAPP_KERNEL_TEST_DEVICE=cuda runs
the same tests compiled, with the real configs and tuning.

Tolerances, (rtol, atol) per dtype. Kernel and reference multiply the same inputs exactly in fp32 and
sum in fp32 in different orders, then round once to the output dtype, so they differ by the order of
summation (<= K * 2^-24 * sum|x*w|, ~1e-5 for K <= 130 and the O(1) outputs made here) plus at most one
unit in the last place of the output dtype: rtol is that unit (2^-7 for bf16's 8-bit significand, 2^-10
for fp16's 11) and atol absorbs the summation-order term on outputs near zero.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

DEVICE = os.environ.get("AAPP_KERNEL_TEST_DEVICE", "cpu")
_IMPORTED_BEFORE = "aapp_kernels.splitk" in sys.modules
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2.0**-10, 1e-4),
    torch.bfloat16: (2.0**-7, 1e-4),
}


@pytest.fixture(autouse=True)
def _kernels_can_run() -> None:
    from aapp_kernels import _runtime

    if DEVICE == "cpu" and not _runtime.kernels_interpreted():
        pytest.fail(
            "kernels.* was imported (compiled) before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
            f"run tests/kernels in its own process (imported before conftest: {_IMPORTED_BEFORE})"
        )
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("AAPP_KERNEL_TEST_DEVICE=cuda but CUDA is not available")


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def make_operands(gen, dtype, device, rows, k, n, *, lead=()):
    """x [*lead, rows, k] ~ N(0, 1) and W [n, k] ~ N(0, 1/k): outputs of order one."""
    x = torch.randn(*lead, rows, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / k**0.5
    return x.to(device, dtype), w.to(device, dtype)


def make_idx(gen, kind: str, size: int, device) -> torch.Tensor:
    """Kept channels: none, an unsorted ~60% subset, or every channel in shuffled order."""
    perm = torch.randperm(size, generator=gen)
    count = {"empty": 0, "partial": max(1, (size * 3) // 5), "full": size}[kind]
    return perm[:count].to(device)


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer whose every element fails a comparison until the kernel writes it."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    rtol, atol = TOLERANCES[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), rtol=rtol, atol=atol)


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The shared builders, handed to tests as a fixture (tests/ has no package to import them from)."""
    return SimpleNamespace(operands=make_operands, idx=make_idx, poisoned=poisoned, assert_matches=assert_matches)
