"""The MLP gate activations: the one table of each one's name, plain-torch function and kernel code.

Every path that applies a gate activation reads it here: the kernels' `ACT` constexpr (`splitk.gate_up`
switches on the code), the references the kernel tests compare against, the torch backend, and aapp's
pruned forward (through `aapp.models.adapters`, which maps Hugging Face's config names onto these).
No Triton here, so that `aapp_kernels.backend` and `aapp.models` can import it without pulling Triton in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]  # the meaning; references and dense paths compute this
    code: int  # the kernels' ACT constexpr: splitk.gate_up computes `fn` for this code


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (Activation("silu", F.silu, 0), Activation("gelu_tanh", _gelu_tanh, 1))
}


def lookup(name: str) -> Activation:
    """The table's entry for `name`; ValueError naming the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
