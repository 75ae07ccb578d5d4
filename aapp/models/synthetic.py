"""Random-weight models with real architectures, for tests, speed benchmarks and `aapp models random`.

Speed and memory depend on shapes, not on trained weights, so the benchmarks build LLaMA-2-7B-
and Gemma-3-12B-shaped models here, and `save_random` writes them as checkpoints every command
takes; the tests build tiny ones of each family. Their tokenizers are byte-level (no merges,
so every string round-trips) with the family's special tokens and published chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aapp.errors import InputError, did_you_mean
from aapp.io import atomic_dir, check_new_dir
from aapp.models.adapters import adapter_for
from aapp.models.chat_templates import CHATML, GEMMA3_IT, LLAMA2_CHAT

# Shapes from the published configs. `family` is the text decoder's model_type, which picks its
# config class and extra settings (FAMILIES); `layers` may be cut by callers to fit memory; `vocab`
# None means the tiny tokenizer's size; `chat` names the tokenizer and template a checkpoint gets;
# `init_std` redraws the weights wider than HF's init (std 0.02): in the tiny test shapes, tokens
# then depend on every channel, so pruning visibly changes outputs and ties in argmax are rare.
SHAPES: dict[str, dict] = {
    "tiny-llama": dict(family="llama", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=160, layers=4,
                       chat="llama2", init_std=0.15),
    "tiny-qwen2": dict(family="qwen2", hidden=64, heads=4, kv_heads=2, head_dim=16, inter=160, layers=4,
                       chat="qwen2", init_std=0.15),
    # query_pre_attn_scalar != head_dim, as in Gemma-3-27B, so a scaling taken from the wrong fact shows.
    "tiny-gemma3": dict(family="gemma3_text", hidden=64, heads=4, kv_heads=2, head_dim=32, inter=160, layers=4,
                        query_scalar=24, chat="gemma3", init_std=0.15),
    "llama2-7b": dict(family="llama", hidden=4096, heads=32, kv_heads=32, head_dim=128, inter=11008, layers=32,
                      vocab=32000, context=4096, chat="llama2"),
    "gemma3-12b": dict(family="gemma3_text", hidden=3840, heads=16, kv_heads=8, head_dim=256, inter=15360, layers=48,
                       query_scalar=256, vocab=262208, context=131072, chat="gemma3"),
}

# A vision tower far smaller than Gemma-3's SigLIP-400M: the text decoder is what aapp prunes,
# and the tower only has to make the checkpoint the real release's class and layout.
# image_size / patch_size = 4 patches a side, pooled to mm_tokens_per_image = 4 (2 a side).
SMALL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    image_size=56, patch_size=14)
SMALL_VISION_TOKENS = 4

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ChatTokens:
    """A family's special tokens (first ids, in this order) and chat template."""

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    template: str
    end_of_turn: str | None = None  # a second stop token (Gemma's "<end_of_turn>")


CHAT_TOKENS = {
    "tiny": ChatTokens(("<pad>", "<s>", "</s>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"),
                       bos="<s>", eos="<|end|>", pad="<pad>", template=_CHAT_TEMPLATE),
    "llama2": ChatTokens(("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", pad=None, template=LLAMA2_CHAT),
    "qwen2": ChatTokens(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None, eos="<|im_end|>",
                        pad="<|endoftext|>", template=CHATML),
    "gemma3": ChatTokens(("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                          "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
                         bos="<bos>", eos="<eos>", pad="<pad>", template=GEMMA3_IT, end_of_turn="<end_of_turn>"),
}


def byte_tokenizer(tokens: ChatTokens, vocab_size: int | None = None, chat_template: bool = True):
    """A byte-level BPE tokenizer with no merges: the specials, 256 byte tokens, then filler.

    Every string round-trips, and no file or hub is needed. Filler tokens (`<unused_N>`)
    bring the vocabulary to `vocab_size`, so a model of a real shape decodes every id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = list(tokens.specials) + alphabet
    filler = [f"<unused_{i}>" for i in range(max(0, (vocab_size or 0) - len(base)))]
    vocab = {tok: i for i, tok in enumerate(base + filler)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    named = {tokens.bos, tokens.eos, tokens.pad} - {None}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=tokens.bos, eos_token=tokens.eos, pad_token=tokens.pad,
        additional_special_tokens=[t for t in tokens.specials if t not in named],
    )
    if chat_template:
        fast.chat_template = tokens.template
    return fast


def tiny_tokenizer(chat_template: bool = True):
    """The tokenizer of the tiny test shapes: 7 specials and 256 byte tokens."""
    return byte_tokenizer(CHAT_TOKENS["tiny"], chat_template=chat_template)


def tokenizer_for(shape: str):
    """The tokenizer a checkpoint of `shape` gets: its family's specials, template and vocabulary size."""
    s = SHAPES[shape]
    return byte_tokenizer(CHAT_TOKENS[s.get("chat", "tiny")], vocab_size=s.get("vocab"))


def _gemma3_settings(s: dict, n_layers: int) -> dict:
    # Gemma-3 alternates five local (sliding) layers with one global layer.
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]
    if n_layers <= 6:
        types[-1] = "full_attention"
    return dict(sliding_window=8 if s["hidden"] < 256 else 1024, layer_types=types,
                query_pre_attn_scalar=s["query_scalar"])


def _gemma3_multimodal(text_cfg, tok):
    """The text config inside a Gemma3Config with SMALL_VISION, as the -it releases are."""
    from transformers import Gemma3Config

    ids = tok.convert_tokens_to_ids(["<image_soft_token>", "<start_of_image>", "<end_of_image>"])
    if None in ids or tok.unk_token_id in ids:
        raise ValueError("a multimodal Gemma-3 config needs a tokenizer with Gemma's image tokens")
    return Gemma3Config(text_config=text_cfg.to_dict(), vision_config=dict(SMALL_VISION),
                        mm_tokens_per_image=SMALL_VISION_TOKENS, image_token_index=ids[0],
                        boi_token_index=ids[1], eoi_token_index=ids[2], tie_word_embeddings=False)


@dataclass(frozen=True)
class Family:
    """How a random model of one model_type is configured, beyond the numbers every shape has."""

    settings: Callable[[dict, int], dict] = lambda s, n_layers: {}  # extra config fields, from the shape
    multimodal: Callable | None = None  # (text config, tokenizer) -> the release's multimodal config


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "qwen2": Family(),
    "gemma3_text": Family(_gemma3_settings, _gemma3_multimodal),
}


def check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise InputError(f"unknown shape {shape!r}{did_you_mean(shape, SHAPES)}; choose one of {', '.join(SHAPES)}")


def multimodal_release(shape: str) -> bool:
    """Whether `shape`'s release is multimodal (written so unless text_only)."""
    return FAMILIES[SHAPES[shape]["family"]].multimodal is not None


def config_for(shape: str, vocab_size: int = 263, layers: int | None = None, *, multimodal: bool = False,
               tokenizer=None, **overrides):
    """A transformers config of the named shape.

    `tokenizer` gives the special-token ids (the tiny tokenizer's otherwise); `multimodal`
    wraps the text config as the shape's multimodal release is (Gemma-3's -it releases).
    """
    from transformers import AutoConfig

    s = dict(SHAPES[shape])
    n_layers = layers or s["layers"]
    tok = tokenizer or tiny_tokenizer(chat_template=False)
    family = FAMILIES[s["family"]]
    if multimodal and family.multimodal is None:
        raise ValueError(f"{shape}: only Gemma-3 shapes have a multimodal release")
    cfg = AutoConfig.for_model(
        s["family"],
        vocab_size=vocab_size, hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=n_layers, num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"], max_position_embeddings=s.get("context", 4096),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False, rms_norm_eps=1e-6, **family.settings(s, n_layers),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    if multimodal:
        cfg = family.multimodal(cfg, tok)
    return cfg


def random_model(shape: str, *, seed: int = 0, dtype=torch.float32, device="cpu", layers: int | None = None,
                 vocab_size: int = 263, attn_implementation: str | None = None, multimodal: bool = False,
                 tokenizer=None):
    """A causal LM of the named shape with seeded random weights, in eval mode.

    `attn_implementation` ("sdpa", "eager") picks the dense attention transformers runs; None is its default.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config_for(shape, vocab_size=vocab_size, layers=layers, multimodal=multimodal, tokenizer=tokenizer)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn_implementation)
    std = SHAPES[shape].get("init_std")
    if std is not None:
        unit = adapter_for(model).unit_norm_weight  # norms stay near scaling by one
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.normal_(unit, 0.1)
                else:
                    p.normal_(0.0, std)
    return model.eval()


def save_random(shape: str, out: str | Path, *, layers: int | None = None, dtype=torch.bfloat16,
                text_only: bool = False, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `shape` to `out`: config, safetensors, tokenizer.

    Gemma-3 shapes are written multimodal, as the release is, unless `text_only`. It is a
    plain transformers directory (AutoModelForCausalLM loads it with no aapp code), built
    beside `out` and renamed into place, so an interrupted write leaves nothing.
    """
    from transformers import GenerationConfig

    check_shape(shape)
    if layers is not None and layers < 1:
        raise InputError(f"layers must be at least 1, got {layers}")
    check_new_dir(out, "--out")  # before minutes spent making a large model's weights
    tokens = CHAT_TOKENS[SHAPES[shape].get("chat", "tiny")]
    tok = tokenizer_for(shape)
    multimodal = multimodal_release(shape) and not text_only
    model = random_model(shape, seed=seed, dtype=dtype, layers=layers, vocab_size=len(tok),
                         multimodal=multimodal, tokenizer=tok)
    stops = [tok.eos_token_id] + ([tok.convert_tokens_to_ids(tokens.end_of_turn)] if tokens.end_of_turn else [])
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                               eos_token_id=stops if len(stops) > 1 else stops[0])
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)
