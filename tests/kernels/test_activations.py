"""The one activation table: each entry's kernel code computes its torch function, and nothing else."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aapp_kernels.activations import ACTIVATIONS, lookup
from aapp_kernels.splitk import splitk_finish

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_kernel_code_computes_the_torch_function(helpers, device, name):
    # One split, so the finish is the epilogue alone: act(g) * u with u = 1 is act(g), over a range wide
    # enough that silu and tanh-GELU differ everywhere but at 0 (a swapped code fails by ~0.1).
    g = torch.linspace(-8.0, 8.0, 161, dtype=torch.float32)[None]
    ws = torch.stack([g, torch.ones_like(g)])[:, None].to(device)  # [2 planes, 1 split, 1, 161]
    out = helpers.poisoned(tuple(g.shape), torch.float32, device)
    splitk_finish(ws, out, activation=ACTIVATIONS[name].code)
    helpers.assert_matches(out, ACTIVATIONS[name].fn(g).to(device))


def test_codes_are_distinct():
    codes = [a.code for a in ACTIVATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))


def test_lookup_refuses_an_unknown_name():
    assert lookup("silu") is ACTIVATIONS["silu"]
    with pytest.raises(ValueError, match=r"unknown activation 'relu'; expected one of \['gelu_tanh', 'silu'\]"):
        lookup("relu")


def test_table_and_backend_import_without_triton():
    code = ("import sys; import aapp_kernels.activations, aapp_kernels.backend, aapp.models.adapters; "
            "print('triton' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
