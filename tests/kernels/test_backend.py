"""The backend switch: both backends give the same kept-channel linears, and bad choices are AappErrors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aapp.errors import AappError
from aapp_kernels.backend import get_backend, k_major
from aapp_kernels.gated_mlp import gated_up_reference
from aapp_kernels.gather_in import gather_in_reference
from aapp_kernels.gather_out import gather_out_reference

K, N = 48, 40
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def linears(gen, device):
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(device)
    w2 = (torch.randn(N, K, generator=gen) / K**0.5).to(device)
    b = torch.randn(N, generator=gen).to(device)
    idx = torch.randperm(N, generator=gen)[:25].sort().values.to(device)
    return w, w2, b, idx


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("rows", [1, 37])
def test_backends_match_references(helpers, gen, device, linears, name, rows):
    backend = get_backend(name, device)
    assert backend.name == name
    w, w2, b, idx = linears
    x = torch.randn(2, rows, K, generator=gen).to(device)
    x_kept = torch.randn(2, rows, idx.numel(), generator=gen).to(device)
    w_in = (torch.randn(K, N, generator=gen) / N**0.5).to(device)  # [K, N]: input channels are N

    helpers.assert_matches(backend.output_gather(w, b, idx)(x), gather_out_reference(x, w, b, idx))
    helpers.assert_matches(backend.output_gather(w, None, idx)(x), gather_out_reference(x, w, None, idx))
    helpers.assert_matches(backend.input_gather(w_in, idx)(x_kept), gather_in_reference(x_kept, w_in, idx))
    helpers.assert_matches(backend.input_gather(k_major(w_in), idx)(x_kept), gather_in_reference(x_kept, w_in, idx))
    for act in ("silu", "gelu_tanh"):
        helpers.assert_matches(backend.gated_up(w, w2, idx, act)(x), gated_up_reference(x, w, w2, idx, act))


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_empty_keep_set(device, linears, name):
    backend = get_backend(name, device)
    w, w2, b, _ = linears
    none = torch.empty(0, dtype=torch.long, device=device)
    x = torch.randn(3, K, device=device)
    assert torch.equal(backend.input_gather(w, none)(x[:, :0]), torch.zeros(3, N, device=device))
    assert backend.output_gather(w, b, none)(x).shape == (3, 0)
    assert backend.gated_up(w, w2, none, "silu")(x).shape == (3, 0)


def test_torch_backend_copies_once_triton_keeps_references(device, linears):
    w, _, b, idx = linears
    dense = get_backend("torch", device).output_gather(w, b, idx)
    kernel = get_backend("triton", device).output_gather(w, b, idx)
    assert dense.weight.shape == (idx.numel(), K) and dense.weight.data_ptr() != w.data_ptr()
    assert kernel.weight.data_ptr() == w.data_ptr()


def test_auto_picks_torch_off_cuda():
    assert get_backend("auto", "cpu").name == "torch"


def test_unknown_backend_is_an_aapp_error():
    with pytest.raises(AappError, match="unknown kernel backend 'cutlass'"):
        get_backend("cutlass", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_triton_on_missing_cuda_is_an_aapp_error():
    with pytest.raises(AappError, match="CUDA is not available"):
        get_backend("triton", "cuda")


_FRESH_PROCESS = """
import os, sys, torch
from aapp.errors import AappError
from aapp_kernels.backend import get_backend
try:
    get_backend("triton", "cpu")
except AappError as e:
    print("refused:", e)
assert "triton" in sys.modules and "aapp_kernels.splitk" not in sys.modules  # refusing fixed no kernel's mode
os.environ["TRITON_INTERPRET"] = "1"  # after triton's import: its own @jit helpers stay compiled
backend = get_backend("triton", "cpu")
x, w, idx = torch.randn(3, 16), torch.randn(8, 16), torch.tensor([1, 4, 6])
print("gather_out", torch.allclose(backend.output_gather(w, None, idx)(x), x @ w[idx].T, atol=1e-5))
h = x[:1] @ w[idx].T
y = backend.gated_up(w, w, idx, "silu")(x[:1])
print("gated_up", torch.allclose(y, torch.nn.functional.silu(h) * h, atol=1e-5))
"""


def test_triton_on_cpu_needs_the_interpreter():
    # A fresh process: this one has had TRITON_INTERPRET set by the conftest since collection.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "refused: the triton kernel backend cannot run on cpu" in result.stdout
    assert "gather_out True" in result.stdout and "gated_up True" in result.stdout


def test_prepare_rejects_bad_idx(device, linears):
    w, w2, b, _ = linears
    for name in ("torch", "triton"):
        backend = get_backend(name, device)
        with pytest.raises(ValueError, match="idx"):
            backend.output_gather(w, b, torch.tensor([[1, 2]], device=device))
        with pytest.raises(ValueError, match="activation"):
            backend.gated_up(w, w2, torch.tensor([1], device=device), "relu")
