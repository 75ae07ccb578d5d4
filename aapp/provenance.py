"""Where and how a measurement was taken, for the JSON that benchmark scripts write."""

from __future__ import annotations

import os
import platform
import shlex

import torch


def machine() -> dict:
    """CPU model, core and thread counts, and the versions that decide speed."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "triton": triton_version, "cuda": torch.version.cuda}


def script_command(script: str, argv: list[str]) -> str:
    """The command line that reproduces a run of scripts/`script`.py with `argv`."""
    return f"python scripts/{script}.py " + shlex.join(argv)
