"""A tiny GGUF written with the `gguf` package, so the fetch/convert path runs without a download.

It is a real checkpoint in llama.cpp's layout: Q8_0-quantised matrices (so dequantisation is
exercised), float32 norms, and the byte-level BPE tokenizer metadata plus chat template that
transformers' GGUF loader reads (`tokenizer.ggml.*`, `tokenizer.chat_template`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "o x"]


def tiny_vocab() -> list[str]:
    """Specials, GPT-2's printable spelling of the 256 bytes (a "gpt2" GGUF's alphabet), then merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merged = [m.replace(" ", "") for m in MERGES]
    return SPECIALS + list(bytes_to_unicode().values()) + merged


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a 2-layer `arch` ("llama" or "qwen2") model with a 263-token vocabulary to `path`."""
    import gguf

    hidden, heads, kv_heads, ffn, layers = 64, 4, 2, 128, 2
    head_dim = hidden // heads
    tokens = tiny_vocab()
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("aapp tiny test model")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    n_normal = len(tokens) - len(SPECIALS)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * n_normal)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def matrix(name: str, rows: int, cols: int) -> None:
        # [out, in] like torch; Q8_0 quantises along the last axis in blocks of 32.
        data = (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def vector(name: str, n: int, scale: float = 0.1) -> None:
        w.add_tensor(name, (1.0 + rng.standard_normal(n) * scale).astype(np.float32))

    matrix("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        vector(f"blk.{i}.attn_norm.weight", hidden)
        matrix(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        if arch == "qwen2":
            vector(f"blk.{i}.attn_q.bias", heads * head_dim)
            vector(f"blk.{i}.attn_k.bias", kv_heads * head_dim)
            vector(f"blk.{i}.attn_v.bias", kv_heads * head_dim)
        matrix(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        vector(f"blk.{i}.ffn_norm.weight", hidden)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ffn)
    vector("output_norm.weight", hidden)
    matrix("output.weight", len(tokens), hidden)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama GGUF file; read-only, shared by the session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", "llama")


@pytest.fixture(scope="session")
def tiny_gguf_writer():
    """`write_tiny_gguf(path, arch)`, for tests that need another architecture or seed."""
    return write_tiny_gguf
