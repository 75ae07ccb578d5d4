"""gated_up against its reference under the interpreter: both activations, every regime and keep set."""

import pytest
import torch

from aapp_kernels._runtime import DecodeConfig
from aapp_kernels.gated_mlp import gated_up, gated_up_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = [1, 3, 37]  # GEMV reduce, decode tl.dot, tiled GEMM
K, N = 100, 72


def _weights(helpers, gen, dtype, device, rows, k=K, n=N):
    x, w_gate = helpers.operands(gen, dtype, device, rows, k, n)
    w_up = (torch.randn(n, k, generator=gen) / k**0.5).to(device, dtype)
    return x, w_gate, w_up


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("keep", ["empty", "partial", "full"])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_matches_reference(helpers, gen, device, dtype, rows, keep, activation):
    x, wg, wu = _weights(helpers, gen, dtype, device, rows)
    idx = helpers.idx(gen, keep, N, device)
    out = helpers.poisoned((rows, idx.numel()), dtype, device)
    y = gated_up(x, wg, wu, idx, activation, out=out)
    assert y.data_ptr() == out.data_ptr()
    helpers.assert_matches(y, gated_up_reference(x, wg, wu, idx, activation))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_split_k(helpers, gen, device, dtype, rows, activation):
    # The activation needs the full gate sum, so it runs in the finish, after both planes are reduced.
    x, wg, wu = _weights(helpers, gen, dtype, device, rows)
    idx = helpers.idx(gen, "partial", N, device)
    out = helpers.poisoned((rows, idx.numel()), dtype, device)
    gated_up(x, wg, wu, idx, activation, out=out, config=DecodeConfig(block_n=32, block_k=32, split_k=2))
    helpers.assert_matches(out, gated_up_reference(x, wg, wu, idx, activation))


@pytest.mark.parametrize("k, n", [(48, 130), (7, 5)])
@pytest.mark.parametrize("rows", [1, 37])
def test_ragged_shapes(helpers, gen, device, k, n, rows):
    x, wg, wu = _weights(helpers, gen, torch.float32, device, rows, k, n)
    idx = helpers.idx(gen, "partial", n, device)
    helpers.assert_matches(gated_up(x, wg, wu, idx, "silu"), gated_up_reference(x, wg, wu, idx, "silu"))


def test_large_negative_gates_give_zero(helpers, device):
    # exp(-z) overflows for very negative gates; the kernel must still return act(g) * u ~ 0, not nan.
    x = torch.full((1, 8), 1.0, device=device)
    wg = torch.full((4, 8), -50.0, device=device)
    wu = torch.ones(4, 8, device=device)
    idx = torch.arange(4, device=device)
    for activation in ("silu", "gelu_tanh"):
        y = gated_up(x, wg, wu, idx, activation)
        helpers.assert_matches(y, gated_up_reference(x, wg, wu, idx, activation))


def test_activation_matters(helpers, gen, device):
    x, wg, wu = _weights(helpers, gen, torch.bfloat16, device, 3)
    idx = helpers.idx(gen, "partial", N, device)
    with pytest.raises(AssertionError):
        helpers.assert_matches(gated_up(x, wg, wu, idx, "silu"), gated_up_reference(x, wg, wu, idx, "gelu_tanh"))


def test_rejects_bad_operands(helpers, gen, device):
    x, wg, wu = _weights(helpers, gen, torch.float32, device, 2)
    idx = torch.arange(4, device=device)
    with pytest.raises(ValueError, match="activation"):
        gated_up(x, wg, wu, idx, "relu")
    with pytest.raises(ValueError, match="differ"):
        gated_up(x, wg, wu[:5], idx, "silu")
