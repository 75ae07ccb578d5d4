import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aapp.calibration.run import TextSettings, calibrate_text
from aapp.errors import AappError, InputError
from aapp.generation import encode, generate_batch, positions
from aapp.methods import make_method
from aapp.models.adapters import adapter_for
from aapp.models.loading import LoadedModel, fingerprint
from aapp.models.synthetic import config_for, tiny_tokenizer
from aapp.pruning.engine import PruneOptions, prune_model
from aapp.pruning.export import (
    MARKER, export_compatible, export_options, export_static, export_heads, group_uniform_mask,
)
from aapp.methods.plan import LayerBudget
from tests.conftest import PROMPTS, make_loaded

TEXT = ["It was a bright cold day in April, and the clocks were striking thirteen. " * 8] * 4
OPTIONS = PruneOptions(ratio=0.5, dense_layers=3)  # dense_layers is ignored by export, on purpose


def calib(loaded):
    return calibrate_text(loaded, TEXT, TextSettings(samples=2, seq_len=32, batch_size=2), "test text")


def logits(model, tokenizer):
    ids, attn = encode(tokenizer, PROMPTS, "cpu")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn)).logits
    return out, attn.bool()


def mha_llama(tied: bool) -> LoadedModel:
    """A tiny LLaMA without GQA (like LLaMA-2-7B), optionally with tied embeddings (like Qwen2.5-0.5B)."""
    tok = tiny_tokenizer()
    cfg = config_for("tiny-llama", vocab_size=len(tok), num_key_value_heads=4, tie_word_embeddings=tied)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.1) if "norm" in name else p.normal_(0.0, 0.15)
    model.eval()
    adapter = adapter_for(model)
    return LoadedModel("tiny-mha", model, tok, adapter, adapter.geometry(model), fingerprint(model))


def check_matches_engine(loaded, method_name, out_dir, saved_type):
    """Export, reload with plain transformers, and compare with the engine running the same masks."""
    g = loaded.geometry
    cal = calib(loaded)
    dense, valid = logits(loaded.model, loaded.tokenizer)
    report = export_static(loaded, make_method(method_name), OPTIONS, cal, out_dir)

    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = model.config.get_text_config()
    assert cfg.model_type == report.model_type == saved_type
    assert cfg.num_attention_heads == report.num_attention_heads < g.num_heads
    assert cfg.intermediate_size == report.intermediate_size < g.intermediate_size
    assert cfg.head_dim == g.head_dim and cfg.num_key_value_heads == report.num_key_value_heads
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == report.params_after < report.params_before == sum(p.numel() for p in loaded.model.parameters())
    assert json.loads((out_dir / MARKER).read_text())["params_after"] == n_params

    with prune_model(loaded, export_compatible(make_method(method_name)), export_options(OPTIONS), cal) as h:
        assert len(h.runtimes) == g.num_layers  # every layer pruned, as in the export
        ref, _ = logits(loaded.model, loaded.tokenizer)
        ref_gen = generate_batch(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=6).completions
    out, _ = logits(model, tok)
    assert not torch.allclose(out[valid], dense[valid], atol=1e-2)  # pruning did change the model
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-4, atol=1e-4)
    assert generate_batch(model, tok, PROMPTS, max_new_tokens=6).completions == ref_gen
    return report, model


@pytest.mark.parametrize("shape,method,saved_type", [
    ("tiny-llama", "wanda-sp", "llama"),
    ("tiny-llama", "flap", "llama"),
    ("tiny-qwen2", "wanda-sp", "qwen2"),
    ("tiny-qwen2", "flap", "llama"),  # Qwen2 cannot hold the compensation biases; LLaMA can
    ("tiny-gemma3", "wanda-sp", "gemma3_text"),
])
def test_export_reloads_smaller_and_matches_engine(shape, method, saved_type, tmp_path):
    loaded = make_loaded(shape)
    report, model = check_matches_engine(loaded, method, tmp_path / "out", saved_type)
    g = loaded.geometry
    assert report.num_key_value_heads == g.num_kv_heads  # GQA: every kv head stays
    attn = model.model.layers[1].self_attn
    if method == "flap":
        assert report.attention_bias and report.mlp_bias
        assert model.config.attention_bias and model.config.mlp_bias
        assert attn.o_proj.bias.abs().max() > 0 and model.model.layers[1].mlp.down_proj.bias.abs().max() > 0
        if shape == "tiny-llama":  # q/k/v had no bias: the ones attention_bias adds must be zeros
            assert torch.all(attn.q_proj.bias == 0) and torch.all(attn.v_proj.bias == 0)
    else:
        assert attn.o_proj.bias is None and not report.attention_bias and not report.mlp_bias
    if shape == "tiny-qwen2":
        src = loaded.adapter.layer_parts(loaded.model, 1).q_proj.bias
        assert attn.q_proj.bias.abs().max() > 0 and src.abs().max() > 0  # Qwen2's q/k/v biases were carried


@pytest.mark.parametrize("tied", [False, True])
def test_export_without_gqa_prunes_kv_heads_too(tied, tmp_path):
    loaded = mha_llama(tied)
    report, model = check_matches_engine(loaded, "wanda-sp", tmp_path / "out", "llama")
    assert report.num_key_value_heads == report.num_attention_heads == 2
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_gemma3_flap_is_refused(tmp_path):
    loaded = make_loaded("tiny-gemma3")
    with pytest.raises(AappError, match="Gemma-3's MLP has no bias"):
        export_static(loaded, make_method("flap"), OPTIONS, calib(loaded), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp dir left


@pytest.mark.parametrize("name, reason", [("pp", "static methods only"), ("aapp", "static methods only"),
                                          ("dense", "dense prunes nothing, so there is nothing to export")])
def test_dynamic_methods_are_refused(name, reason, tiny_llama, tmp_path):
    with pytest.raises(AappError, match=reason):  # dense was said to pick heads and channels per batch
        export_static(tiny_llama, make_method(name), OPTIONS, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_group_uniform_mask():
    g = make_loaded("tiny-llama").geometry  # 4 heads, 2 kv heads, hidden 64
    head_scores = torch.tensor([1.0, 5.0, 3.0, 2.0])
    channels = torch.arange(g.intermediate_size, dtype=torch.float32)
    m = group_uniform_mask(head_scores, channels, LayerBudget(heads=2, kv_heads=2, channels=10), g)
    assert m.heads.tolist() == [1, 2]  # the best of each group, though heads 1 and 3 are the top two overall
    assert m.kv_heads.tolist() == [0, 1] and m.query_slots(g) is None
    assert m.channels.tolist() == list(range(g.intermediate_size - 10, g.intermediate_size))
    # A budget too small for one head per group still keeps one per group.
    m = group_uniform_mask(head_scores, channels, LayerBudget(heads=1, kv_heads=1, channels=10), g)
    assert m.heads.tolist() == [1, 2]


def test_export_heads_are_whole_per_group_and_divide_hidden():
    g = make_loaded("tiny-llama").geometry
    budget = lambda h: LayerBudget(heads=h, kv_heads=1, channels=1)  # noqa: E731 (kv_heads is not read)
    assert [export_heads(budget(h), g) for h in (1, 2, 3, 4)] == [2, 2, 4, 4]  # ties round up
    gemma_270m = dataclasses.replace(g, hidden_size=640, num_heads=4, num_kv_heads=1)  # 640 % 3 != 0
    assert [export_heads(budget(h), gemma_270m) for h in (1, 2, 3, 4)] == [1, 2, 4, 4]
    qwen_05b = dataclasses.replace(g, hidden_size=896, num_heads=14, num_kv_heads=2)  # 896 % 10 != 0
    assert export_heads(budget(10), qwen_05b) == 8 and export_heads(budget(13), qwen_05b) == 14
    llama_7b = dataclasses.replace(g, hidden_size=4096, num_heads=32, num_kv_heads=32)  # no GQA
    assert export_heads(budget(22), llama_7b) == 16 and export_heads(budget(24), llama_7b) == 32


def test_overwrite_rules_and_atomic_replace(tiny_llama, tmp_path, monkeypatch):
    cal = calib(tiny_llama)
    meth = make_method("wanda-sp")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier aapp export"):
        export_static(tiny_llama, meth, OPTIONS, cal, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    (out / "keep.txt").unlink()  # an empty directory is fine
    first = export_static(tiny_llama, meth, OPTIONS, cal, out)
    # A failure while writing leaves the earlier export whole and no temp dir behind.
    monkeypatch.setattr(type(tiny_llama.tokenizer), "save_pretrained", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_static(tiny_llama, meth, PruneOptions(ratio=0.25), cal, out)
    monkeypatch.undo()
    assert json.loads((out / MARKER).read_text())["ratio"] == first.ratio
    # An earlier export is replaced.
    second = export_static(tiny_llama, meth, PruneOptions(ratio=0.25), cal, out)
    assert second.intermediate_size > first.intermediate_size
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == second.intermediate_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        export_static(tiny_llama, meth, OPTIONS, cal, tmp_path / "file")


def test_refuses_a_model_wrapped_by_the_engine(tiny_llama, tmp_path):
    cal = calib(tiny_llama)
    with prune_model(tiny_llama, make_method("wanda-sp"), export_options(OPTIONS), cal):
        with pytest.raises(AappError, match="wrapped by the pruning engine"):
            export_static(tiny_llama, make_method("wanda-sp"), OPTIONS, cal, tmp_path / "out")
