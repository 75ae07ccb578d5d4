"""gather_out against its reference under the interpreter: every regime, dtype, bias and keep set."""

import pytest
import torch

from aapp_kernels._runtime import DecodeConfig, GemmConfig
from aapp_kernels.gather_out import gather_out, gather_out_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = [1, 3, 37]  # GEMV reduce, decode tl.dot, tiled GEMM
K, N = 100, 72


def _bias(gen, n, dtype, device):
    return (0.5 * torch.randn(n, generator=gen)).to(device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("keep", ["empty", "partial", "full"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(helpers, gen, device, dtype, rows, keep, with_bias):
    x, w = helpers.operands(gen, dtype, device, rows, K, N)
    b = _bias(gen, N, dtype, device) if with_bias else None
    idx = helpers.idx(gen, keep, N, device)  # unsorted: column j must still hold row idx[j]
    out = helpers.poisoned((rows, idx.numel()), dtype, device)
    y = gather_out(x, w, b, idx, out=out)
    assert y.data_ptr() == out.data_ptr()
    helpers.assert_matches(y, gather_out_reference(x, w, b, idx))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_split_k(helpers, gen, device, dtype, rows):
    # K = 100 is 4 blocks of 32 over 3 splits (2, 2, 0 blocks); the finish adds bias and unsorts.
    x, w = helpers.operands(gen, dtype, device, rows, K, N)
    b = _bias(gen, N, dtype, device)
    idx = helpers.idx(gen, "partial", N, device)
    out = helpers.poisoned((rows, idx.numel()), dtype, device)
    gather_out(x, w, b, idx, out=out, config=DecodeConfig(block_n=32, block_k=32, split_k=3))
    helpers.assert_matches(out, gather_out_reference(x, w, b, idx))


@pytest.mark.parametrize("k, n", [(48, 130), (130, 48), (7, 5)])
@pytest.mark.parametrize("rows", [1, 37])
def test_ragged_shapes(helpers, gen, device, k, n, rows):
    x, w = helpers.operands(gen, torch.float32, device, rows, k, n)
    b = _bias(gen, n, torch.float32, device)
    idx = helpers.idx(gen, "partial", n, device)
    helpers.assert_matches(gather_out(x, w, b, idx), gather_out_reference(x, w, b, idx))


@pytest.mark.parametrize("rows", [1, 37])
def test_strided_operands_and_batch_dims(helpers, gen, device, rows):
    x, w = helpers.operands(gen, torch.float32, device, rows, 2 * K, N, lead=(2,))
    x = x[..., ::2]
    w = w[:, ::2]
    idx = helpers.idx(gen, "partial", N, device)
    y = gather_out(x, w, None, idx)
    assert y.shape == (2, rows, idx.numel())
    helpers.assert_matches(y, gather_out_reference(x, w, None, idx))


def test_forced_gemm_on_few_rows(helpers, gen, device):
    x, w = helpers.operands(gen, torch.bfloat16, device, 3, K, N)
    b = _bias(gen, N, torch.bfloat16, device)
    idx = helpers.idx(gen, "partial", N, device)
    out = helpers.poisoned((3, idx.numel()), torch.bfloat16, device)
    gather_out(x, w, b, idx, out=out, config=GemmConfig(block_m=16, block_n=32, block_k=32, group_m=1))
    helpers.assert_matches(out, gather_out_reference(x, w, b, idx))


def test_sorted_idx_without_sorting(helpers, gen, device):
    x, w = helpers.operands(gen, torch.float32, device, 3, K, N)
    idx = helpers.idx(gen, "partial", N, device).sort().values
    helpers.assert_matches(gather_out(x, w, None, idx, sort=False), gather_out_reference(x, w, None, idx))


def test_tolerance_catches_a_missing_bias(helpers, gen, device):
    x, w = helpers.operands(gen, torch.bfloat16, device, 3, K, N)
    b = _bias(gen, N, torch.bfloat16, device)
    idx = helpers.idx(gen, "partial", N, device)
    with pytest.raises(AssertionError):
        helpers.assert_matches(gather_out(x, w, None, idx), gather_out_reference(x, w, b, idx))


def test_rejects_bad_operands(helpers, gen, device):
    x, w = helpers.operands(gen, torch.float32, device, 2, K, N)
    with pytest.raises(ValueError, match="columns"):
        gather_out(x[:, :5], w, None, torch.arange(4, device=device))
    with pytest.raises(ValueError, match="bias"):
        gather_out(x, w, torch.zeros(3, device=device), torch.arange(4, device=device))
