"""How a pruned forward runs its kept-channel linears: `torch` (gather once, then dense) or `triton`.

A backend prepares one linear for one set of kept channels (once per batch: the set is fixed across
decode steps) and returns a callable. `torch` copies the kept weights at prepare time, which is Probe
Pruning's way; `triton` keeps references to the full weights and idx and reads the kept weights in
place on every call through the `aapp::` custom ops, so torch.compile can trace it.

Importing this module does not import Triton; only asking for the triton backend does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from aapp.errors import AappError
from aapp_kernels import activations


class PreparedLinear(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class LinearBackend(Protocol):
    name: str

    def prepare_layer(self, gathered_inputs: Sequence[torch.nn.Linear]) -> Callable[[], None]:
        """Store the weights of linears whose kept input channels are gathered one by one as this
        backend reads them fastest (the same values, in the original's place, so the model is
        never held twice), once when a layer is wrapped. Returns the undo."""
        ...

    def input_gather(self, weight: torch.Tensor, idx: torch.Tensor) -> PreparedLinear:
        """weight [N, K], idx sorted [k]: fn(x_kept [..., k]) = x_kept @ weight[:, idx].T -> [..., N]."""
        ...

    def output_gather(self, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor) -> PreparedLinear:
        """weight [N, K], idx sorted [k]: fn(x [..., K]) = x @ weight[idx].T + bias[idx] -> [..., k]."""
        ...

    def gated_up(self, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str) -> PreparedLinear:
        """fn(x [..., K]) = act(x @ w_gate[idx].T) * (x @ w_up[idx].T) -> [..., k]."""
        ...


def k_major(weight: torch.Tensor) -> torch.Tensor:
    """The same [N, K] matrix stored K-major, so each input channel is a contiguous row of W.T.

    Worth doing once at load time for weights whose input channels are gathered one by one
    (down_proj): a row-major W[:, idx] touches every cache sector of W at keep fractions above ~1/16,
    a K-major one reads only kept rows. F.linear accepts either layout.
    """
    return weight.t().contiguous().t()


def _check_prepare(weights: list[torch.Tensor], idx: torch.Tensor, axis: int) -> None:
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be a 1-D int32/int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
    for w in weights:
        if w.dim() != 2:
            raise ValueError(f"weights must be 2-D [N, K], got {tuple(w.shape)}")
        if w.device != idx.device:
            raise ValueError(f"idx on {idx.device} but weight on {w.device}")
    if weights[0].shape[axis] < idx.numel():
        raise ValueError(f"{idx.numel()} kept channels but the weight has {weights[0].shape[axis]}")


# ---------------------------------------------------------------------------------------------- torch


@dataclass(frozen=True)
class _DenseInput:
    weight: torch.Tensor  # [N, k], gathered
    idx: torch.Tensor
    full_width: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.idx.numel() and x.shape[-1] == self.full_width:
            x = x.index_select(-1, self.idx)
        return F.linear(x, self.weight)


@dataclass(frozen=True)
class _DenseOutput:
    weight: torch.Tensor  # [k, K], gathered
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class _DenseGated:
    weight: torch.Tensor  # [2k, K]: gate rows then up rows, so one GEMM serves both
    activation: activations.Activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g, u = F.linear(x, self.weight).chunk(2, dim=-1)
        return self.activation.fn(g) * u


def _nothing() -> None:
    pass


class TorchBackend:
    name = "torch"

    def prepare_layer(self, gathered_inputs: Sequence[torch.nn.Linear]) -> Callable[[], None]:
        return _nothing  # index_select copies the kept columns once per batch; the layout does not matter

    def input_gather(self, weight: torch.Tensor, idx: torch.Tensor) -> PreparedLinear:
        _check_prepare([weight], idx, axis=1)
        return _DenseInput(weight.index_select(1, idx), idx, weight.shape[1])

    def output_gather(self, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor) -> PreparedLinear:
        _check_prepare([weight], idx, axis=0)
        return _DenseOutput(weight.index_select(0, idx), None if bias is None else bias.index_select(0, idx))

    def gated_up(self, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str) -> PreparedLinear:
        act = activations.lookup(activation)
        _check_prepare([w_gate, w_up], idx, axis=0)
        # Gathered straight into one buffer: a cat of two gathered halves would hold the kept
        # rows twice at once and copy them twice.
        k = idx.numel()
        weight = w_gate.new_empty((2 * k, w_gate.shape[1]))
        torch.index_select(w_gate, 0, idx, out=weight[:k])
        torch.index_select(w_up, 0, idx, out=weight[k:])
        return _DenseGated(weight, act)


# --------------------------------------------------------------------------------------------- triton


@dataclass(frozen=True)
class _KernelInput:
    weight: torch.Tensor  # [N, K], full, not copied
    idx: torch.Tensor
    run: int  # aligned run length of idx, for vector loads along a row-major W

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aapp.gather_in(x, self.weight, self.idx, self.run)


@dataclass(frozen=True)
class _KernelOutput:
    weight: torch.Tensor
    bias: torch.Tensor | None
    idx: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aapp.gather_out(x, self.weight, self.bias, self.idx)


@dataclass(frozen=True)
class _KernelGated:
    w_gate: torch.Tensor
    w_up: torch.Tensor
    idx: torch.Tensor
    activation: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aapp.gated_up(x, self.w_gate, self.w_up, self.idx, self.activation)


class TritonBackend:
    name = "triton"

    def __init__(self) -> None:
        import aapp_kernels.ops  # noqa: F401  registers torch.ops.aapp.*

    def prepare_layer(self, gathered_inputs: Sequence[torch.nn.Linear]) -> Callable[[], None]:
        for linear in gathered_inputs:
            linear.weight.data = k_major(linear.weight.data)

        def undo() -> None:  # row-major again, one matrix at a time
            for linear in gathered_inputs:
                linear.weight.data = linear.weight.data.contiguous()
        return undo

    def input_gather(self, weight: torch.Tensor, idx: torch.Tensor) -> PreparedLinear:
        from aapp_kernels.gather_in import aligned_run

        _check_prepare([weight], idx, axis=1)
        idx = idx.contiguous()
        # Runs only help where kept channels are neighbours in memory; finding them synchronises once.
        run = aligned_run(idx) if weight.stride(1) == 1 else 1
        return _KernelInput(weight, idx, run)

    def output_gather(self, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor) -> PreparedLinear:
        _check_prepare([weight], idx, axis=0)
        return _KernelOutput(weight, bias, idx.contiguous())

    def gated_up(self, w_gate: torch.Tensor, w_up: torch.Tensor, idx: torch.Tensor, activation: str) -> PreparedLinear:
        activations.lookup(activation)  # refused here, at prepare time, not inside the op
        _check_prepare([w_gate, w_up], idx, axis=0)
        return _KernelGated(w_gate, w_up, idx.contiguous(), activation)


def triton_unavailable(device: torch.device | str) -> str | None:
    """Why the triton backend cannot run on `device`, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        from aapp_kernels import _runtime
    except ImportError as exc:
        return f"triton cannot be imported ({exc})"
    if not _runtime.triton_runs_on(device, _runtime.kernels_interpreted()):
        return "the kernels need a CUDA device (or TRITON_INTERPRET=1 set before they are imported)"
    return None


def get_backend(name: str = "auto", device: torch.device | str = "cpu") -> LinearBackend:
    """`triton` on CUDA and `torch` elsewhere for "auto"; AappError for an unknown or unusable name."""
    device = torch.device(device)
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        reason = triton_unavailable(device)
        if reason is not None:
            raise AappError(f"the triton kernel backend cannot run on {device}: {reason}")
        return TritonBackend()
    if name == "auto":
        if device.type == "cuda" and triton_unavailable(device) is None:
            return TritonBackend()
        return TorchBackend()
    raise AappError(f"unknown kernel backend {name!r}; expected auto, torch or triton")
