import pytest
import torch

from aapp.errors import AappError, ModelError
from aapp.models.adapters import HF_ACTIVATIONS, activation_fn, adapter_for, adapter_for_config, supported_model_types
from aapp.models.synthetic import SHAPES, random_model, tokenizer_for
from aapp_kernels.activations import ACTIVATIONS


def test_geometry_matches_config(tiny):
    g, cfg = tiny.geometry, tiny.model.config
    s = SHAPES[tiny.name]
    assert (g.num_layers, g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim, g.intermediate_size) == (
        s["layers"], s["hidden"], s["heads"], s["kv_heads"], s["head_dim"], s["inter"])
    assert g.group_size == s["heads"] // s["kv_heads"]
    assert [g.kv_head_of(h) for h in range(g.num_heads)] == [h // g.group_size for h in range(g.num_heads)]
    assert g.vocab_size == cfg.vocab_size


def test_layer_parts_shapes(tiny):
    g = tiny.geometry
    for i in range(g.num_layers):
        p = tiny.adapter.layer_parts(tiny.model, i)
        assert p.q_proj.weight.shape == (g.num_heads * g.head_dim, g.hidden_size)
        assert p.k_proj.weight.shape == (g.num_kv_heads * g.head_dim, g.hidden_size)
        assert p.v_proj.weight.shape == (g.num_kv_heads * g.head_dim, g.hidden_size)
        assert p.o_proj.weight.shape == (g.hidden_size, g.num_heads * g.head_dim)
        assert p.gate_proj.weight.shape == p.up_proj.weight.shape == (g.intermediate_size, g.hidden_size)
        assert p.down_proj.weight.shape == (g.hidden_size, g.intermediate_size)


def test_family_quirks(tiny):
    p = tiny.adapter.layer_parts(tiny.model, 0)
    g = tiny.geometry
    if tiny.name == "tiny-qwen2":
        assert p.q_proj.bias is not None and p.k_proj.bias is not None and p.o_proj.bias is None
    if tiny.name == "tiny-gemma3":
        assert p.q_norm is not None and p.post_attn_norm is not None and p.post_mlp_norm is not None
        assert g.activation == "gelu_tanh"
        assert g.head_dim * g.num_heads != g.hidden_size  # head_dim is not hidden / heads
        assert g.attn_scaling == pytest.approx(tiny.model.config.query_pre_attn_scalar ** -0.5)
        assert None in g.sliding_window and any(w for w in g.sliding_window)
    else:
        assert p.q_norm is None and p.post_attn_norm is None
        assert g.activation == "silu"
        assert g.attn_scaling == pytest.approx(g.head_dim ** -0.5)


def test_block_equation_matches_layer(tiny):
    """The LayerParts docstring's block equation reproduces the HF layer: proof the roles are right."""
    g = tiny.geometry
    layer_idx = 0
    p = tiny.adapter.layer_parts(tiny.model, layer_idx)
    x = torch.randn(1, 5, g.hidden_size)
    pos = torch.arange(5)[None]
    rope = tiny.adapter.decoder(tiny.model).rotary_emb
    pe = rope(x, pos) if tiny.name != "tiny-gemma3" else rope(x, pos, tiny.model.config.layer_types[layer_idx])
    with torch.no_grad():
        ref = p.layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
        ref = ref[0] if isinstance(ref, tuple) else ref
        a, _ = p.attn(p.input_norm(x), position_embeddings=pe, attention_mask=None)
        h = x + (p.post_attn_norm(a) if p.post_attn_norm is not None else a)
        m = p.mlp(p.pre_mlp_norm(h))
        y = h + (p.post_mlp_norm(m) if p.post_mlp_norm is not None else m)
    torch.testing.assert_close(y, ref)


def test_unknown_architecture_names_supported():
    class Cfg:
        model_type = "gpt2"

    with pytest.raises(ModelError) as e:
        adapter_for_config(Cfg())
    for t in supported_model_types():
        assert t in str(e.value)


def test_hf_activation_names_map_onto_the_kernel_table():
    assert set(HF_ACTIVATIONS.values()) <= set(ACTIVATIONS)
    for name, entry in ACTIVATIONS.items():
        assert activation_fn(name) is entry.fn
    with pytest.raises(ModelError, match="unknown activation 'swish'"):
        activation_fn("swish")  # an HF name, not a Geometry one: the adapter maps it first


@pytest.mark.parametrize("shape,field", [("tiny-llama", "hidden_act"), ("tiny-gemma3", "hidden_activation")])
def test_unknown_hf_activation_is_refused(shape, field):
    model = random_model(shape, layers=1)
    setattr(model.config, field, "relu")
    with pytest.raises(ModelError, match=r"unsupported MLP activation 'relu' in (llama|gemma3_text)"):
        adapter_for(model).geometry(model)


# (shape, need_o_bias, need_down_bias) -> (saved model_type, class, attention_bias, mlp_bias, saved as LLaMA)
EXPORT_TARGETS = {
    ("tiny-llama", False, False): ("llama", "LlamaForCausalLM", False, False, False),
    ("tiny-llama", True, False): ("llama", "LlamaForCausalLM", True, False, False),
    ("tiny-llama", False, True): ("llama", "LlamaForCausalLM", False, True, False),
    ("tiny-llama", True, True): ("llama", "LlamaForCausalLM", True, True, False),
    ("tiny-qwen2", False, False): ("qwen2", "Qwen2ForCausalLM", False, False, False),
    ("tiny-qwen2", True, False): ("llama", "LlamaForCausalLM", True, False, True),
    ("tiny-qwen2", False, True): ("llama", "LlamaForCausalLM", True, True, True),
    ("tiny-qwen2", True, True): ("llama", "LlamaForCausalLM", True, True, True),
    ("tiny-gemma3", False, False): ("gemma3_text", "Gemma3ForCausalLM", False, False, False),
    ("tiny-gemma3", True, False): ("gemma3_text", "Gemma3ForCausalLM", True, False, False),
}


@pytest.mark.parametrize("key", list(EXPORT_TARGETS), ids=lambda k: "-".join(map(str, k)))
def test_export_target_per_family(key):
    shape, need_o, need_down = key
    model_type, cls, attn_bias, mlp_bias, as_llama = EXPORT_TARGETS[key]
    model = random_model(shape, layers=1)
    before = model.config.to_dict()
    t = adapter_for(model).export_target(model, "flap", need_o, need_down)
    assert (t.config.model_type, t.model_cls.__name__, t.attention_bias, t.mlp_bias) == (model_type, cls, attn_bias,
                                                                                      mlp_bias)
    # Qwen2Config has neither field: its q/k/v biases are hard-coded and it has no others.
    assert getattr(t.config, "attention_bias", False) == attn_bias and getattr(t.config, "mlp_bias", False) == mlp_bias
    assert any("saved as LLaMA" in n for n in t.notes) == as_llama and len(t.notes) == as_llama
    assert model.config.to_dict() == before  # the source's config is copied, never changed
    if as_llama:  # the LLaMA config carries Qwen2's shapes and settings
        assert (t.config.hidden_size, t.config.rope_parameters, t.config.vocab_size) == (
            model.config.hidden_size, model.config.rope_parameters, model.config.vocab_size)


def test_export_target_of_multimodal_gemma3_sets_the_text_config():
    tok = tokenizer_for("tiny-gemma3")
    model = random_model("tiny-gemma3", layers=1, multimodal=True, tokenizer=tok, vocab_size=len(tok))
    t = adapter_for(model).export_target(model, "flap", True, False)
    assert t.model_cls is type(model) and t.config.model_type == "gemma3"
    assert t.config.get_text_config().attention_bias and not model.config.get_text_config().attention_bias


@pytest.mark.parametrize("need_o", [False, True])
def test_gemma3_export_refuses_an_mlp_bias(need_o):
    model = random_model("tiny-gemma3", layers=1)
    with pytest.raises(AappError, match="Gemma-3's MLP has no bias in transformers, so flap's down_proj"):
        adapter_for(model).export_target(model, "flap", need_o, True)


def test_qwen2_with_sliding_windows_cannot_become_llama():
    model = random_model("tiny-qwen2", layers=2)
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(AappError, match="sliding-window layers rule out saving it as LLaMA"):
        adapter_for(model).export_target(model, "flap", True, False)
    assert adapter_for(model).export_target(model, "wanda-sp", False, False).model_cls is type(model)
