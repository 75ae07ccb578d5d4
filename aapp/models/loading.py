"""Load a causal LM and its tokenizer from an alias, a local directory, a GGUF file or a hub id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aapp.errors import AappError, ModelError, did_you_mean
from aapp.models.adapters import ArchAdapter, Geometry, adapter_for_config


DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for aapp: the HF module, its tokenizer, adapter and identity."""

    name: str
    model: nn.Module
    tokenizer: object
    adapter: ArchAdapter
    geometry: Geometry
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise AappError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AappError("device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on CUDA (what the targets are served in), fp32 on CPU (bf16 matmuls are slow there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise AappError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _source(name: str) -> tuple[str, dict]:
    """Turn a user's model name into a from_pretrained location and extra kwargs."""
    from aapp.models import registry

    if registry.is_alias(name):
        return str(registry.pull(name)), {}
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json; not a transformers model directory")
        return str(path), {}
    if path.exists():
        raise ModelError(f"{path}: expected a model directory or a .gguf file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"{name}: no such model directory")
    if "/" not in name:
        known = ", ".join(sorted(registry.ALIASES))
        raise ModelError(f"unknown model {name!r}{did_you_mean(name, registry.ALIASES)}: not an alias ({known}), "
                         "a local path, or a hub id (owner/name)")
    return name, {}


DEVICE_MAP_PREFIX = "map:"


def split_device(device: str) -> tuple[str, str | None]:
    """A device choice as the CLI takes it: "cpu", "cuda", "auto", or "map:STRATEGY" (accelerate's
    device_map, e.g. "map:auto" spreads a large model over GPUs and CPU) -> (device, device_map)."""
    if device.startswith(DEVICE_MAP_PREFIX):
        strategy = device[len(DEVICE_MAP_PREFIX):]
        if not strategy:
            raise ModelError(f"device {device!r}: name a device map after {DEVICE_MAP_PREFIX}, e.g. map:auto")
        return "auto", strategy
    return device, None


def peek_num_layers(name: str) -> int | None:
    """The decoder layer count of `name` from its config alone, without loading weights or fetching
    anything: None for an alias not yet pulled, a hub id, or a config that cannot be read (the
    load reports those)."""
    from transformers import AutoConfig

    from aapp.models import registry

    if registry.is_alias(name):
        if not registry.is_cached(name):
            return None
        location, extra = str(registry.alias_dir(name)), {}
    else:
        path = Path(name).expanduser()
        if not (path.is_dir() or (path.is_file() and path.suffix == ".gguf")):
            return None
        location, extra = _source(name)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False, **extra)
        return int(config.get_text_config().num_hidden_layers)
    except (OSError, ValueError, AttributeError, TypeError):  # a hint only: load_model words the failure
        return None


def load_model(name: str, *, device: str = "auto", dtype: str = "auto", device_map: str | None = None) -> LoadedModel:
    """Load `name` for inference, in eval mode, on `device` with `dtype`.

    `device_map` (e.g. "auto") is handed to accelerate through `from_pretrained`, which then
    places the layers itself, over several GPUs or GPU and CPU; `device` only picks the dtype.
    Only safetensors or GGUF weights are read (`use_safetensors=True`), and no remote code runs.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; HF's bars would interleave
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    location, extra = _source(name)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(_load_failure(name, e)) from None
    adapter = adapter_for_config(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, trust_remote_code=False,
            use_safetensors=None if "gguf_file" in extra else True,
            **({"device_map": device_map} if device_map is not None else {}), **extra,
        )
    except (OSError, ValueError) as e:
        raise ModelError(_load_failure(name, e)) from None
    if device_map is None:
        model.to(dev)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer, adapter=adapter,
        geometry=adapter.geometry(model), fingerprint=fingerprint(model),
    )


def _load_failure(name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "/" in name and not Path(name).exists():
        return f"cannot load {name!r}: the hub is not reachable from here or the id is wrong ({first})"
    return f"cannot load {name!r}: {first}"


def fingerprint(model: nn.Module) -> str:
    """A short, stable identity of a model's architecture and weights.

    Hashing every weight of a 7B model takes minutes, so we hash the config plus a
    strided sample of each tensor (name, shape and up to 4096 values). Values are
    rounded to bfloat16 first, so the same checkpoint loaded in fp32 on a CPU and in
    bf16 on a GPU has one fingerprint, while another checkpoint, a fine-tune or a
    pruned copy gets another.
    """
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_attn_implementation_autoset"):
        cfg.pop(volatile, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(device="cpu", dtype=torch.bfloat16).float().contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def tiny_loaded(shape: str = "tiny-qwen2", seed: int = 0, **kw) -> LoadedModel:
    """A random-weight model of a tiny test shape with its tiny tokenizer, loaded as `load_model` loads
    (the tests' and the benchmarks' `--tiny` model)."""
    from aapp.models.adapters import adapter_for
    from aapp.models.synthetic import random_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = random_model(shape, seed=seed, vocab_size=len(tok), **kw)
    adapter = adapter_for(model)
    return LoadedModel(shape, model, tok, adapter, adapter.geometry(model), fingerprint(model))
