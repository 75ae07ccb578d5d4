"""Random-weight models with real architectures, for tests and speed benchmarks.

Speed depends on shapes, not on trained weights, so the benchmarks build LLaMA-2-7B-
and Gemma-3-12B-shaped models here; the tests build tiny ones of each family.
"""

from __future__ import annotations

import torch

# Shapes from the published configs. `layers` may be cut by callers to fit memory.
SHAPES: dict[str, dict] = {
    "tiny-llama": dict(family="llama", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=160, layers=4),
    "tiny-qwen2": dict(family="qwen2", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=160, layers=4),
    # query_pre_attn_scalar != head_dim, as in Gemma-3-27B, so a scaling taken from the wrong fact shows.
    "tiny-gemma3": dict(family="gemma3_text", hidden=64, heads=4, kv_heads=2, head_dim=32, inter=160, layers=4,
                        query_scalar=24),
    "llama2-7b": dict(family="llama", hidden=4096, heads=32, kv_heads=32, head_dim=128, inter=11008, layers=32),
    "gemma3-12b": dict(family="gemma3_text", hidden=3840, heads=16, kv_heads=8, head_dim=256, inter=15360, layers=48,
                       query_scalar=256),
}

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer with no merges: 256 byte tokens plus specials.

    Every string round-trips, and no file or hub is needed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
        additional_special_tokens=specials[3:6],
    )
    if chat_template:
        fast.chat_template = _CHAT_TEMPLATE
    return fast


def config_for(shape: str, vocab_size: int = 263, layers: int | None = None, **overrides):
    """A transformers config of the named shape."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    s = dict(SHAPES[shape])
    n_layers = layers or s["layers"]
    common = dict(
        vocab_size=vocab_size, hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=n_layers, num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=6,
        tie_word_embeddings=False,
    )
    family = s["family"]
    if family == "llama":
        cfg = LlamaConfig(**common, rms_norm_eps=1e-6)
    elif family == "qwen2":
        cfg = Qwen2Config(**common, rms_norm_eps=1e-6)
    else:
        # Gemma-3 alternates five local (sliding) layers with one global layer.
        types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
        if n_layers <= 6:
            types[-1] = "full_attention"
        cfg = Gemma3TextConfig(**common, rms_norm_eps=1e-6, sliding_window=8 if s["hidden"] < 256 else 1024,
                               layer_types=types, query_pre_attn_scalar=s["query_scalar"])
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def random_model(shape: str, *, seed: int = 0, dtype=torch.float32, device="cpu", layers: int | None = None,
                 vocab_size: int = 263, attn_implementation: str | None = None):
    """A causal LM of the named shape with seeded random weights, in eval mode.

    `attn_implementation` ("sdpa", "eager") picks the dense attention transformers runs; None is its default.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config_for(shape, vocab_size=vocab_size, layers=layers)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn_implementation)
    if shape.startswith("tiny"):
        # HF's init is tiny (std 0.02); larger weights make tokens depend on every channel,
        # so pruning visibly changes outputs and ties in argmax are rare.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(0.0 if "gemma" in shape else 1.0, 0.1)
                else:
                    p.normal_(0.0, 0.15)
    return model.eval()
