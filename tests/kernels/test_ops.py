"""The aapp:: custom ops: schema, fake (meta) implementations, and a full-graph torch.compile trace."""

import torch

import aapp_kernels.ops  # noqa: F401  registers torch.ops.aapp.*
from aapp_kernels.backend import get_backend
from aapp_kernels.gather_in import gather_in_reference
from aapp_kernels.gather_out import gather_out_reference

K, N = 48, 40


def _cases(gen, device):
    w = torch.randn(N, K, generator=gen).to(device)
    w2 = torch.randn(N, K, generator=gen).to(device)
    b = torch.randn(N, generator=gen).to(device)
    idx = torch.tensor([1, 5, 7, 30], device=device)
    x = torch.randn(3, K, generator=gen).to(device)
    return [
        (torch.ops.aapp.gather_in.default, (x[:, :4].contiguous(), w, idx)),
        (torch.ops.aapp.gather_in.default, (x, w, idx)),
        (torch.ops.aapp.gather_in.default, (x[:, :16].contiguous(), w, torch.arange(16, 32, device=device), 16)),
        (torch.ops.aapp.gather_out.default, (x, w, b, idx)),
        (torch.ops.aapp.gather_out.default, (x, w, None, idx)),
        (torch.ops.aapp.gated_up.default, (x, w, w2, idx, "gelu_tanh")),
    ]


def test_opcheck(gen, device):
    for op, args in _cases(gen, device):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_fake_shapes(gen, device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        for op, args in _cases(gen, device):
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            out = op(*fake_args)
            n_out = N if op is torch.ops.aapp.gather_in.default else 4
            assert out.shape == (3, n_out) and out.dtype == torch.float32


def test_pruned_block_compiles_in_one_graph(gen, device):
    # An attention-like block: q over kept heads, then o over the same kept heads.
    backend = get_backend("triton", device)
    wq = torch.randn(N, K, generator=gen).to(device) / K**0.5
    wo = torch.randn(K, N, generator=gen).to(device) / N**0.5
    idx = torch.arange(8, 24, device=device)
    q = backend.output_gather(wq, None, idx)
    o = backend.input_gather(wo, idx)

    def block(x):
        return x + o(torch.tanh(q(x)))

    x = torch.randn(2, 5, K, generator=gen).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    expected = x + gather_in_reference(torch.tanh(gather_out_reference(x, wq, None, idx)), wo, idx)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
