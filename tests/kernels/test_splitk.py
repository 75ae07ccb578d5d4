"""splitk_finish against its reference under the interpreter: the split sums and every epilogue."""

import pytest
import torch

from aapp_kernels.activations import lookup
from aapp_kernels.splitk import splitk_finish, splitk_finish_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "silu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scatter", [False, True])
def test_matches_reference(helpers, gen, device, dtype, activation, bias, scatter):
    planes, split_k, m, n, width = (2 if activation else 1), 3, 5, 150, 200  # n spans two blocks of 128
    ws = torch.randn(planes, split_k, m, n, generator=gen, dtype=torch.float32).to(device)
    idx = torch.randperm(width, generator=gen)[:n].sort().values.to(device)
    b = torch.randn(width, generator=gen, dtype=torch.float32).to(device, dtype) if bias else None
    cols = torch.randperm(n, generator=gen).to(device) if scatter else None
    out = helpers.poisoned((m, n), dtype, device)
    splitk_finish(ws, out, bias=b, idx=idx, out_cols=cols,
                  activation=lookup(activation).code if activation else -1)
    want = splitk_finish_reference(ws, bias=b, idx=idx, activation=activation).to(dtype)
    if scatter:  # the reference is in kept order; column j goes to out_cols[j]
        want = torch.empty_like(want).index_copy_(1, cols, want)
    helpers.assert_matches(out, want)
