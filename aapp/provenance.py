"""Where and how a measurement was taken, for the JSON that benchmark scripts write."""

from __future__ import annotations

import json
import os
import platform
import shlex

import torch


def cpu_name() -> str:
    """The CPU's model name; platform.processor() is often only "x86_64" or empty on Linux."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


def device_name(device: torch.device | str) -> str:
    """What a measurement ran on: the GPU's name on CUDA, the CPU's otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine() -> dict:
    """CPU model, core and thread counts, and the versions that decide speed."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "triton": triton_version, "cuda": torch.version.cuda}


def versions() -> dict[str, str]:
    """aapp's version and the stack's, which an output's numbers may depend on."""
    import transformers

    import aapp

    return {"aapp": aapp.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def script_command(script: str, argv: list[str], folder: str = "scripts") -> str:
    """The command line that reproduces a run of `folder`/`script`.py with `argv`."""
    return f"python {folder}/{script}.py " + shlex.join(argv)


def write_result(doc: dict, table: str, json_path: str | None, md_path: str | None) -> None:
    """A benchmark's outputs: `doc` as JSON and `table` as markdown headed by the command that made
    it (doc["command"]), each written atomically where a path is given."""
    from aapp.io import atomic_write

    if json_path:
        with atomic_write(json_path) as f:
            f.write(json.dumps(doc, indent=2, default=str) + "\n")
    if md_path:
        with atomic_write(md_path) as f:
            f.write(f"`{doc['command']}`\n\n{table}\n")
