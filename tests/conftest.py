"""Shared fixtures: tiny random-weight models of every supported family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aapp.models.loading import LoadedModel, tiny_loaded

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_loaded(shape: str, seed: int = 0, **kw) -> LoadedModel:
    return tiny_loaded(shape, seed, **kw)


@pytest.fixture(params=FAMILIES)
def tiny(request) -> LoadedModel:
    return make_loaded(request.param)


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return make_loaded("tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 model saved as a transformers directory (safetensors), for CLI tests."""
    d = tmp_path_factory.mktemp("tiny-qwen2")
    loaded = make_loaded("tiny-qwen2")
    loaded.model.save_pretrained(d, safe_serialization=True)
    loaded.tokenizer.save_pretrained(d)
    return d


PROMPTS = ["hello there", "a much longer prompt with more words in it", "x", "tell me a story about a cat"]


def logits(loaded: LoadedModel, prompts=PROMPTS):
    """The model's logits on `prompts` (left-padded batch) and which positions are real tokens."""
    from aapp.generation import encode, positions

    ids, attn = encode(loaded.tokenizer, prompts, loaded.device)
    with torch.no_grad():
        out = loaded.model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
    return out, attn.bool()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny-model matmuls gain nothing from threads, and on a loaded 2-core CI machine OpenMP
    # threads waiting on each other made them 15-20x slower.
    torch.set_num_threads(1)


def load_script(name: str, folder: str = "scripts"):
    """A script of scripts/ (or experiments/) as a module (e.g. "bench_cpu"): in-process, as importing
    torch and transformers again in a subprocess would cost more than the smoke test itself."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module
