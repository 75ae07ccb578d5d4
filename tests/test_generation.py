import torch

from aapp.chat import render_all
from aapp.generation import encode, generate_batch
from aapp.models.synthetic import tiny_tokenizer
from tests.conftest import PROMPTS


def test_batch_equals_batch_of_one(tiny):
    batch = generate_batch(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=12)
    for i, p in enumerate(PROMPTS):
        single = generate_batch(tiny.model, tiny.tokenizer, [p], max_new_tokens=12)
        assert single.completions[0] == batch.completions[i]
        assert single.new_tokens[0] == batch.new_tokens[i]
        assert single.prompt_tokens[0] == batch.prompt_tokens[i]


def test_deterministic(tiny_llama):
    a = generate_batch(tiny_llama.model, tiny_llama.tokenizer, PROMPTS, max_new_tokens=8)
    b = generate_batch(tiny_llama.model, tiny_llama.tokenizer, PROMPTS, max_new_tokens=8)
    assert a.completions == b.completions


def test_stops_at_eos(tiny_llama):
    """Declare the model's own first greedy token an EOS: generation must stop right there."""
    m, tok = tiny_llama.model, tiny_llama.tokenizer
    free = generate_batch(m, tok, ["hi"], max_new_tokens=6)
    assert free.new_tokens == [6]
    first = tok(free.completions[0], add_special_tokens=False).input_ids[0]
    m.generation_config.eos_token_id = first
    stopped = generate_batch(m, tok, ["hi"], max_new_tokens=6)
    assert stopped.new_tokens == [1] and stopped.completions == [""]


def test_chat_template_used_when_present():
    tok = tiny_tokenizer()
    texts, templated = render_all(tok, ["hello"])
    assert templated and texts[0].endswith("<|assistant|>") and "<|user|>hello" in texts[0]
    raw, templated = render_all(tiny_tokenizer(chat_template=False), ["hello"])
    assert not templated and raw == ["hello"]


def test_a_conversation_is_generated_from_its_whole_rendering():
    from aapp.chat import parse_messages, render

    tok = tiny_tokenizer()
    conv = parse_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "t")
    ids, _ = encode(tok, [conv, "hello"], "cpu")
    assert tok.decode(ids[0], skip_special_tokens=False).endswith(render(tok, conv))
    assert "Be brief." in render(tok, conv)
