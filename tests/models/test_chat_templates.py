"""The target families' chat templates, and where AAPP reads in them: the post-instruction tokens.

The real tokenizers can't be fetched here, so the rendered strings the releases produce are
written out below, and the tokens are checked with two stand-ins: byte-level BPE (Gemma-3,
Qwen) and a SentencePiece-like prefix-space tokenizer (LLaMA-2), whose prefix space makes a
tail tokenized alone one token longer than in context.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from aapp.methods.aapp.passes import post_instruction_tokens
from aapp.generation import encode
from aapp.models.chat_templates import GEMMA3_IT, LLAMA2_CHAT
from aapp.models.synthetic import tokenizer_for

PROMPTS = ["How do I bake bread?", "Write a poem about a river that runs past an old mill."]

# What meta-llama/Llama-2-7b-chat-hf and google/gemma-3-12b-it render for PROMPTS[0].
LLAMA2_RENDERED = "<s>[INST] How do I bake bread? [/INST]"
LLAMA2_WITH_SYSTEM = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHow do I bake bread? [/INST]"
GEMMA3_RENDERED = "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n"
GEMMA3_WITH_SYSTEM = ("<bos><start_of_turn>user\nBe brief.\n\nHow do I bake bread?<end_of_turn>\n"
                      "<start_of_turn>model\n")
TAILS = {"llama2": " [/INST]", "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
         "qwen2": "<|im_end|>\n<|im_start|>assistant\n"}


def sentencepiece_like(template: str) -> PreTrainedTokenizerFast:
    """Characters as tokens, spaces as '▁' and a '▁' put before each text, as LLaMA's (legacy) tokenizer does."""
    chars = sorted({chr(c) for c in range(33, 127)} | {"▁", "\n"})
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Replace("▁", " ")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = template
    return fast


def render(tok, prompt, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family,plain,with_system", [
    ("llama2", LLAMA2_RENDERED, LLAMA2_WITH_SYSTEM), ("gemma3", GEMMA3_RENDERED, GEMMA3_WITH_SYSTEM)])
def test_templates_render_as_the_releases(family, plain, with_system):
    tok = tokenizer_for("llama2-7b" if family == "llama2" else "gemma3-12b")
    assert tok.chat_template == (LLAMA2_CHAT if family == "llama2" else GEMMA3_IT)
    assert render(tok, PROMPTS[0]) == plain
    assert render(tok, PROMPTS[0], system="Be brief.") == with_system


@pytest.mark.parametrize("family,make", [
    ("llama2", lambda: sentencepiece_like(LLAMA2_CHAT)),
    ("llama2", lambda: tokenizer_for("llama2-7b")),
    ("gemma3", lambda: tokenizer_for("gemma3-12b")),
    ("qwen2", lambda: tokenizer_for("tiny-qwen2")),
])
def test_post_instruction_positions_are_the_template_tail(family, make):
    tok = make()
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token  # as load_model does for LLaMA, which has none
    n = post_instruction_tokens(tok)
    ids, mask = encode(tok, PROMPTS, "cpu")
    assert ids.shape[0] == 2 and not mask[0].all()  # the short prompt is left-padded
    for row in ids:
        # The last n tokens of every prompt, padded or not, are exactly the template's tail ...
        assert tok.decode(row[-n:]) == TAILS[family]
        # ... and one more reaches into the user's message.
        assert tok.decode(row[-n - 1:])[0] in "?."


def test_sentencepiece_tail_alone_is_longer_than_in_context():
    # Why post_instruction_tokens counts in context: the stand-in reproduces LLaMA's prefix space.
    tok = sentencepiece_like(LLAMA2_CHAT)
    alone = tok(TAILS["llama2"], add_special_tokens=False).input_ids
    assert len(alone) == post_instruction_tokens(tok) + 1
