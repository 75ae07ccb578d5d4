"""The rest of OpenAI's surface as the official client sees it: logprobs in both shapes, legacy
completions, one model by id, empty content, and no broken character where max_tokens cuts."""

from __future__ import annotations

import openai
import pytest
import torch

from aapp.serve.chat import render, validate
from tests.serve.served import MODEL_ID, serving

USER = [{"role": "user", "content": "tell me a story about a cat"}]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def served(serve_model_dir):
    with serving(serve_model_dir) as s:
        yield s


def _first_logprobs(served, ids: torch.Tensor) -> torch.Tensor:
    """The model's own log-probabilities for the token after `ids` [1, S]."""
    with torch.no_grad():
        return torch.log_softmax(served.loaded.model(input_ids=ids).logits[0, -1].float(), dim=-1)


def test_chat_logprobs_are_the_models_own(served):
    r = served.client().chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    tok = served.loaded.tokenizer
    ids = tok(render(tok, validate(USER, 4)), add_special_tokens=False, return_tensors="pt").input_ids
    want = _first_logprobs(served, ids).topk(4)
    first = content[0]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(want.values.tolist(), abs=1e-4)
    for t, i in zip(first.top_logprobs, want.indices.tolist()):
        alone = tok.decode([i])  # a part of a character decodes alone to U+FFFD: OpenAI names it by its bytes
        assert t.token == alone if "\ufffd" not in alone else t.token.startswith("bytes:\\x")
    for t in content:  # greedy: each token is the likeliest at its place
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(t.top_logprobs[0].logprob)
        assert t.logprob <= 0 and t.bytes is not None
    # The tokens' bytes join into the answer (a character split over tokens is whole again).
    joined = b"".join(bytes(t.bytes) for t in content).decode("utf-8", errors="replace")
    assert joined.startswith(r.choices[0].message.content)


def test_streamed_logprobs_are_the_whole_answers(served):
    client = served.client()
    kw = dict(model=MODEL_ID, messages=USER, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob, [u.token for u in t.top_logprobs]) for t in streamed] == \
        [(t.token, t.logprob, [u.token for u in t.top_logprobs]) for t in whole]


def test_legacy_completion_is_the_models_greedy_continuation(served):
    client = served.client()
    r = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL_ID
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 8
    tok = served.loaded.tokenizer
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = served.loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                           do_sample=False)
    assert choice.text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).rstrip("\ufffd")
    lp = choice.logprobs
    assert lp.token_logprobs[0] == pytest.approx(float(_first_logprobs(served, ids).max()), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) == 3 for top in lp.top_logprobs)
    chunks = list(client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8 and "aapp" in chunks[-2].model_extra


def test_legacy_refusals_name_their_parameter(served):
    client = served.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt=["a", "b"], max_tokens=2)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="a", max_tokens=2, logprobs=6)
    assert e.value.body["param"] == "logprobs"


def test_one_model_by_id(served):
    client = served.client()
    m = client.models.retrieve(MODEL_ID)
    assert m.id == MODEL_ID and m.object == "model" and m.owned_by == "aapp"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-5")
    assert e.value.body["type"] == "not_found_error" and e.value.body["code"] == "model_not_found"
    assert set(e.value.body) == {"message", "type", "param", "code"}


def test_empty_content_is_a_message(served):
    # garak's test.Blank probe sends an empty prompt; OpenAI answers it.
    for messages in ([{"role": "user", "content": ""}],
                     [{"role": "system", "content": ""}, {"role": "user", "content": ""}]):
        r = served.client().chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_an_answer_cut_by_max_tokens_ends_in_whole_characters(served, max_tokens):
    # Every token of the toy is one byte: biased to 0xC3, the first byte of "é", each token starts a character
    # that the next never completes, and the last one is cut by max_tokens.
    tok = served.loaded.tokenizer
    lead = tok("é", add_special_tokens=False).input_ids[0]
    kw = dict(model=MODEL_ID, max_tokens=max_tokens, temperature=0, logit_bias={str(lead): 100})
    client = served.client()
    chat = client.chat.completions.create(messages=USER, logprobs=True, **kw)
    content = chat.choices[0].message.content
    assert not content.endswith("\ufffd") and chat.choices[0].finish_reason == "length"
    assert content == "" or max_tokens > 1
    assert chat.choices[0].logprobs.content[-1].token == "bytes:\\xc3"
    assert chat.choices[0].logprobs.content[-1].bytes == [0xC3]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        messages=USER, stream=True, **kw) if c.choices)
    assert streamed == chat.choices[0].message.content
    text = client.completions.create(prompt=PROMPT, **kw).choices[0].text
    assert not text.endswith("\ufffd")
    assert "".join(c.choices[0].text for c in client.completions.create(prompt=PROMPT, stream=True, **kw)) == text

