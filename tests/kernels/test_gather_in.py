"""gather_in against its reference under the interpreter: every regime, dtype, x layout and keep set."""

import pytest
import torch

from aapp_kernels._runtime import DecodeConfig, GemmConfig
from aapp_kernels.gather_in import aligned_run, gather_in, gather_in_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 1 row: GEMV reduce; 3 rows: decode tl.dot (rows padded to 16); 37 rows: tiled GEMM, ragged in M.
ROWS = [1, 3, 37]
K, N = 100, 72  # neither a multiple of the interpreter blocks (32 x 64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("keep", ["empty", "partial", "full"])
@pytest.mark.parametrize("x_width", ["compact", "full"])
def test_matches_reference(helpers, gen, device, dtype, rows, keep, x_width):
    x, w = helpers.operands(gen, dtype, device, rows, K, N)
    idx = helpers.idx(gen, keep, K, device)
    if x_width == "compact":
        x = x[:, : idx.numel()].contiguous()  # column j is channel idx[j]
    out = helpers.poisoned((rows, N), dtype, device)
    y = gather_in(x, w, idx, out=out)
    assert y.data_ptr() == out.data_ptr()
    helpers.assert_matches(y, gather_in_reference(x, w, idx))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_split_k(helpers, gen, device, dtype, rows):
    # 60 kept channels = 2 blocks of 32 over 3 splits: one split gets no block and must add nothing.
    x, w = helpers.operands(gen, dtype, device, rows, K, N)
    idx = helpers.idx(gen, "partial", K, device)
    out = helpers.poisoned((rows, N), dtype, device)
    gather_in(x, w, idx, out=out, config=DecodeConfig(block_n=32, block_k=32, split_k=3))
    helpers.assert_matches(out, gather_in_reference(x, w, idx))


@pytest.mark.parametrize("k, n", [(48, 130), (130, 48), (7, 5)])
@pytest.mark.parametrize("rows", [1, 37])
def test_ragged_shapes(helpers, gen, device, k, n, rows):
    x, w = helpers.operands(gen, torch.float32, device, rows, k, n)
    idx = helpers.idx(gen, "partial", k, device)
    helpers.assert_matches(gather_in(x, w, idx), gather_in_reference(x, w, idx))


@pytest.mark.parametrize("rows", [1, 37])
def test_layouts_and_batch_dims(helpers, gen, device, rows):
    # K-major W (the down_proj layout), a strided x and leading batch dims all go through strides.
    x, w = helpers.operands(gen, torch.float32, device, rows, 2 * K, N, lead=(2,))
    x = x[..., ::2]
    w = w[:, ::2].t().contiguous().t()
    idx = helpers.idx(gen, "partial", K, device)
    assert not x.is_contiguous() and w.stride() == (1, N)
    y = gather_in(x, w, idx)
    assert y.shape == (2, rows, N)
    helpers.assert_matches(y, gather_in_reference(x, w, idx))


def test_forced_gemm_on_few_rows(helpers, gen, device):
    x, w = helpers.operands(gen, torch.bfloat16, device, 3, K, N)
    idx = helpers.idx(gen, "partial", K, device)
    out = helpers.poisoned((3, N), torch.bfloat16, device)
    gather_in(x, w, idx, out=out, config=GemmConfig(block_m=16, block_n=32, block_k=32, group_m=1))
    helpers.assert_matches(out, gather_in_reference(x, w, idx))


def test_sorted_idx_without_sorting(helpers, gen, device):
    x, w = helpers.operands(gen, torch.float32, device, 3, K, N)
    idx = helpers.idx(gen, "partial", K, device).sort().values
    helpers.assert_matches(gather_in(x, w, idx, sort=False), gather_in_reference(x, w, idx))


def test_compact_columns_follow_idx_order(helpers, gen, device):
    # Unsorted idx with compact x: column j belongs to idx[j], whatever order the launcher reads in.
    x, w = helpers.operands(gen, torch.float32, device, 1, K, N)
    idx = torch.tensor([9, 2, 40], device=device)
    expected = x[:, idx] @ w[:, idx].T
    helpers.assert_matches(gather_in(x[:, idx].contiguous(), w, idx), expected)


def test_tolerance_catches_a_wrong_channel(helpers, gen, device):
    x, w = helpers.operands(gen, torch.bfloat16, device, 3, K, N)
    idx = helpers.idx(gen, "partial", K, device)
    wrong = idx.clone()
    wrong[0] = next(c for c in range(K) if c not in set(idx.tolist()))
    with pytest.raises(AssertionError):
        helpers.assert_matches(gather_in(x, w, wrong), gather_in_reference(x, w, idx))


def test_rejects_bad_operands(helpers, gen, device):
    x, w = helpers.operands(gen, torch.float32, device, 2, K, N)
    with pytest.raises(ValueError, match="columns"):
        gather_in(x[:, :5], w, torch.arange(4, device=device))
    with pytest.raises(ValueError, match="idx"):
        gather_in(x, w, torch.arange(4.0, device=device))
    with pytest.raises(ValueError, match="does not match"):
        gather_in(x, w.double(), torch.arange(4, device=device))


@pytest.mark.parametrize("idx, run", [
    ([], 1),
    ([3, 9, 4], 1),
    (list(range(8, 16)) + list(range(32, 40)), 8),  # two kept heads of 8
    (list(range(16, 48)), 16),  # capped at 16
    (list(range(4, 12)), 4),  # a run of 8 that starts at 4 is two aligned runs of 4
    (list(range(1, 9)), 1),
    (list(range(0, 6)), 2),
])
def test_aligned_run(device, idx, run):
    assert aligned_run(torch.tensor(idx, dtype=torch.long, device=device)) == run


@pytest.mark.parametrize("rows", [1, 3, 37])
def test_kept_heads_with_vector_hint(helpers, gen, device, rows):
    # Kept heads of 16 channels, shuffled: the sort restores aligned runs and the kernel is told so.
    x, w = helpers.operands(gen, torch.bfloat16, device, rows, 128, N)
    heads = torch.randperm(8, generator=gen)[:5].to(device)
    idx = (heads[:, None] * 16 + torch.arange(16, device=device)).flatten()
    assert aligned_run(idx.sort().values) == 16
    out = helpers.poisoned((rows, N), torch.bfloat16, device)
    gather_in(x, w, idx, out=out)  # run detected after sorting
    helpers.assert_matches(out, gather_in_reference(x, w, idx))
