"""Random-weight checkpoints of published shapes: they must be what the releases are, layout and all."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aapp.errors import InputError
from aapp.models.adapters import adapter_for, adapter_for_config
from aapp.models.loading import load_model
from aapp.models.synthetic import (
    FAMILIES, SHAPES, config_for, multimodal_release, random_model, save_random, tokenizer_for,
)


def on_meta(cfg):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def test_llama2_7b_has_the_release_parameter_count():
    model = on_meta(config_for("llama2-7b", vocab_size=32000, tokenizer=tokenizer_for("llama2-7b")))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616  # meta-llama/Llama-2-7b-hf


def test_gemma3_12b_is_multimodal_with_the_release_text_decoder():
    tok = tokenizer_for("gemma3-12b")
    model = on_meta(config_for("gemma3-12b", vocab_size=len(tok), multimodal=True, tokenizer=tok))
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    g = adapter_for(model).geometry(model)
    assert (g.num_layers, g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim, g.intermediate_size, g.vocab_size) == \
        (48, 3840, 16, 8, 256, 15360, 262208)
    assert g.attn_scaling == 256**-0.5
    # Five sliding-window layers, then a global one, as in the release.
    assert g.sliding_window[:6] == (1024,) * 5 + (None,) and g.sliding_window.count(None) == 8
    decoder = adapter_for(model).decoder(model)
    assert sum(p.numel() for p in decoder.layers.parameters()) == 48 * (
        3840 * 256 * (16 + 8 + 8) + 16 * 256 * 3840 + 3 * 3840 * 15360 + 4 * 3840 + 2 * 256)


@pytest.mark.parametrize("shape,text_only,cls", [
    ("tiny-llama", False, "LlamaForCausalLM"),
    ("tiny-qwen2", False, "Qwen2ForCausalLM"),
    ("tiny-gemma3", False, "Gemma3ForConditionalGeneration"),
    ("tiny-gemma3", True, "Gemma3ForCausalLM"),
])
def test_checkpoint_loads_with_plain_transformers(tmp_path, shape, text_only, cls):
    out = save_random(shape, tmp_path / "m", layers=2, dtype=torch.float32, text_only=text_only)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == cls
    assert model.config.get_text_config().num_hidden_layers == 2
    assert len(tok) == model.config.get_text_config().vocab_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp directory left beside it
    loaded = load_model(str(out), device="cpu")
    assert loaded.geometry.num_layers == 2
    ids = tok("hello", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tok)


def test_gemma3_stops_at_end_of_turn(tmp_path):
    out = save_random("tiny-gemma3", tmp_path / "m", layers=1)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert set(model.generation_config.eos_token_id) == {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")}


def test_same_seed_same_weights_and_refuses_a_used_directory(tmp_path):
    a = save_random("tiny-llama", tmp_path / "a", layers=1, seed=3)
    b = save_random("tiny-llama", tmp_path / "b", layers=1, seed=3)
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(InputError, match="not empty"):
        save_random("tiny-llama", a, layers=1)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_random("tiny-llama", tmp_path / "m", layers=1)
    assert list(tmp_path.iterdir()) == []


def test_unknown_shape_and_bad_layers(tmp_path):
    with pytest.raises(InputError, match="unknown shape"):
        save_random("llama9-1t", tmp_path / "m")
    with pytest.raises(InputError, match="at least 1"):
        save_random("tiny-llama", tmp_path / "m", layers=0)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_builds_its_family_and_an_adapter_takes_it(shape):
    tok = tokenizer_for(shape)
    cfg = config_for(shape, vocab_size=len(tok), layers=1, tokenizer=tok)
    assert cfg.model_type == SHAPES[shape]["family"] and SHAPES[shape]["family"] in FAMILIES
    assert cfg.model_type in adapter_for_config(cfg).model_types
    if not multimodal_release(shape):
        with pytest.raises(ValueError, match="multimodal release"):
            config_for(shape, vocab_size=len(tok), layers=1, multimodal=True, tokenizer=tok)


@pytest.mark.parametrize("shape,unit", [("tiny-llama", 1.0), ("tiny-qwen2", 1.0), ("tiny-gemma3", 0.0)])
def test_tiny_norms_start_near_scaling_by_one(shape, unit):
    # Gemma's RMSNorm multiplies by (1 + w): its weights sit near 0, the others' near 1.
    model = random_model(shape, layers=1)
    norms = torch.cat([p.flatten() for n, p in model.named_parameters() if "norm" in n])
    assert abs(norms.mean().item() - unit) < 0.05 and 0.05 < norms.std().item() < 0.2
    others = torch.cat([p.flatten() for n, p in model.named_parameters() if "norm" not in n])
    assert 0.1 < others.std().item() < 0.2  # init_std, not HF's 0.02


def test_only_gemma3_releases_are_multimodal():
    assert {s for s in SHAPES if multimodal_release(s)} == {"tiny-gemma3", "gemma3-12b"}
