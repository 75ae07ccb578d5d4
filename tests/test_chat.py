"""Chat-format prompts: the messages a row may hold, and how each family's template renders them."""

import pytest

from aapp.chat import Message, fold_system, last_user, parse_messages, render, render_all
from aapp.errors import InputError
from aapp.models.synthetic import tiny_tokenizer, tokenizer_for

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "How do I bake bread?"}]

# What each release's template renders for SYSTEM + TURNS (tests/models/test_chat_templates.py holds the
# one-turn forms, written out from the releases' tokenizer_config.json).
RENDERED = {
    "llama2-7b": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] How do I bake bread? [/INST]",
    "gemma3-12b": ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                   "<start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n"),
    "tiny-qwen2": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                   "Hello!<|im_end|>\n<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"),
}

# Gemma-2's template raises on a system message; the second one drops it without a word.
RAISES_ON_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
)
DROPS_SYSTEM = "{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}{% endif %}" \
               "{% endfor %}<assistant>"


@pytest.mark.parametrize("shape", sorted(RENDERED))
def test_each_family_renders_a_conversation_with_its_system_message(shape):
    messages = parse_messages([SYSTEM, *TURNS], "t")
    assert render(tokenizer_for(shape), messages) == RENDERED[shape]


@pytest.mark.parametrize("shape", sorted(RENDERED))
def test_a_plain_prompt_is_one_user_turn(shape):
    tok = tokenizer_for(shape)
    assert render(tok, "How do I bake bread?") == render(tok, parse_messages([TURNS[-1]], "t"))


@pytest.mark.parametrize("template", [RAISES_ON_SYSTEM, DROPS_SYSTEM], ids=["raises", "drops"])
def test_a_template_without_a_system_role_gets_it_folded_into_the_first_user_turn(template):
    tok = tiny_tokenizer()
    tok.chat_template = template
    text = render(tok, parse_messages([SYSTEM, *TURNS], "t"))
    assert text == "<user>Be brief.\n\nHi<assistant>Hello!<user>How do I bake bread?<assistant>"


def test_a_model_without_a_template_takes_plain_prompts_but_not_conversations():
    tok = tiny_tokenizer(chat_template=False)
    assert render_all(tok, ["hello"]) == (["hello"], False)
    with pytest.raises(InputError, match="need a chat template"):
        render(tok, parse_messages(TURNS, "t"))


def test_a_template_that_refuses_is_one_line():
    tok = tiny_tokenizer()
    tok.chat_template = "{{ raise_exception('Only one turn, please') }}"
    with pytest.raises(InputError, match="chat template refused the messages: Only one turn, please"):
        render(tok, parse_messages(TURNS[-1:], "t"))


def test_text_parts_are_joined_and_last_user_is_the_request():
    messages = parse_messages([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}], "t")
    assert messages == (Message("user", "a\nb"),) and last_user(messages) == "a\nb"
    assert fold_system(parse_messages([SYSTEM, TURNS[0]], "t")) == (Message("user", "Be brief.\n\nHi"),)


@pytest.mark.parametrize("messages, needle", [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    (["hi"], "messages[0]: expected an object"),
    ([{"role": "tool", "content": "x"}], "role 'tool' is not one of system, user, assistant"),
    ([{"role": "user"}], "'content' must be a non-empty string"),
    ([{"role": "user", "content": "  "}], "'content' must be a non-empty string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "content part 'image_url'"),
    ([SYSTEM], "no user message"),
    ([TURNS[0], SYSTEM], "system message may only come first"),
    ([TURNS[1], TURNS[0]], "turn 1 is assistant"),
    ([TURNS[0], TURNS[0]], "turn 2 is user"),
    (TURNS[:2], "last message must be from the user"),
])
def test_bad_messages_are_named(messages, needle):
    with pytest.raises(InputError, match="^f.jsonl:3: .*" + __import__("re").escape(needle)):
        parse_messages(messages, "f.jsonl:3")
