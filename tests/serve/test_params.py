"""Every request parameter the official client knows, for chat and legacy completions: each one the
server takes has an effect a test sees, every other one is a 400 naming it. A parameter that a new
client release adds fails here until someone decides which it is."""

from __future__ import annotations

from dataclasses import dataclass

import openai
import pytest
from openai.types import completion_create_params as text_params
from openai.types.chat import completion_create_params as chat_params

from aapp.serve import schemas
from tests.serve.served import MODEL_ID, serving

USER = [{"role": "user", "content": "tell me a story about a cat"}]
PROMPT = "Once upon a time"


def _names(*typed_dicts) -> set[str]:
    return set().union(*(t.__required_keys__ | t.__optional_keys__ for t in typed_dicts))


@pytest.fixture(scope="module")
def served(serve_model_dir):
    with serving(serve_model_dir) as s:
        yield s


@dataclass
class Reply:
    text: str
    finish_reason: str
    completion_tokens: int
    raw: object


class Api:
    """One endpoint through the official client: a greedy 8-token answer unless told otherwise."""

    def __init__(self, served):
        self.served, self.client = served, served.client()

    def ask(self, **kw) -> Reply:
        r = self._create(**{"model": MODEL_ID, "max_tokens": 8, "temperature": 0, **kw})
        return Reply(self._text(r.choices[0]), r.choices[0].finish_reason, r.usage.completion_tokens, r)

    def chunks(self, **kw) -> list:
        return list(self._create(**{"model": MODEL_ID, "max_tokens": 8, "temperature": 0, "stream": True, **kw}))


class Chat(Api):
    params = _names(chat_params.CompletionCreateParamsNonStreaming, chat_params.CompletionCreateParamsStreaming)
    accepted = schemas.CHAT_FIELDS

    def _create(self, **kw):
        return self.client.chat.completions.create(**{"messages": USER, **kw})

    def _text(self, choice) -> str:
        return choice.message.content

    def piece(self, chunk) -> str:
        return chunk.choices[0].delta.content or "" if chunk.choices else ""

    def tokens(self, **kw) -> list[str]:
        return [t.token for t in self.ask(logprobs=True, **kw).raw.choices[0].logprobs.content]


class Text(Api):
    params = _names(text_params.CompletionCreateParamsNonStreaming, text_params.CompletionCreateParamsStreaming)
    accepted = schemas.TEXT_FIELDS

    def _create(self, **kw):
        return self.client.completions.create(**{"prompt": PROMPT, **kw})

    def _text(self, choice) -> str:
        return choice.text

    def piece(self, chunk) -> str:
        return chunk.choices[0].text if chunk.choices else ""

    def tokens(self, **kw) -> list[str]:
        return self.ask(logprobs=0, **kw).raw.choices[0].logprobs.tokens


# -- what each parameter the server takes does ------------------------------------------------------
def _max_tokens(api: Api, name: str) -> None:
    assert api.ask(**{"max_tokens": None, name: 3}).completion_tokens == 3


def _temperature(api: Api, name: str) -> None:
    assert api.ask(temperature=2.0, seed=1).text != api.ask().text


def _seed(api: Api, name: str) -> None:
    assert api.ask(temperature=1.0, seed=1).text != api.ask(temperature=1.0, seed=2).text


def _top_p(api: Api, name: str) -> None:
    narrow = api.ask(temperature=1.0, seed=1, top_p=1e-6).text  # only the likeliest token is left: greedy
    assert narrow == api.ask().text != api.ask(temperature=1.0, seed=1).text


def _stop(api: Api, name: str) -> None:
    text = api.ask(max_tokens=16).text
    cut = api.ask(max_tokens=16, stop=[text[3]])
    assert cut.finish_reason == "stop" and cut.text == text[: text.find(text[3])]


def _stream(api: Api, name: str) -> None:
    chunks = api.chunks()
    assert len(chunks) > 2 and "".join(api.piece(c) for c in chunks) == api.ask().text


def _stream_options(api: Api, name: str) -> None:
    assert api.chunks(stream_options={"include_usage": True})[-1].usage.completion_tokens == 8


def _penalty(api: Api, name: str) -> None:
    # The greedy answer of the random toy repeats tokens; a penalty of 2 outweighs its small logits.
    plain, penalised = api.tokens(max_tokens=16), api.tokens(max_tokens=16, **{name: 2.0})
    assert len(set(plain)) < len(plain)
    assert len(set(penalised)) == len(penalised)


def _logit_bias(api: Api, name: str) -> None:
    x = api.served.loaded.tokenizer.convert_tokens_to_ids("x")
    assert api.ask(logit_bias={str(x): 100}).text == "x" * 8


def _user(api: Api, name: str) -> None:
    api.ask(user="alice")
    assert api.served.logs[-1]["user"] == "alice"


def _model(api: Api, name: str) -> None:
    with pytest.raises(openai.NotFoundError):
        api.ask(model="gpt-5")


def _messages(api: Api, name: str) -> None:
    assert api.ask(messages=[{"role": "user", "content": "hello there"}]).text != api.ask().text


def _prompt(api: Api, name: str) -> None:
    assert api.ask(prompt="hello there").text != api.ask().text


def _chat_logprobs(api: Api, name: str) -> None:
    r = api.ask(logprobs=True, top_logprobs=3).raw
    content = r.choices[0].logprobs.content
    assert len(content) == 8 and all(len(t.top_logprobs) == 3 for t in content)
    assert api.ask(logprobs=True).raw.choices[0].logprobs.content[0].top_logprobs == []


def _text_logprobs(api: Api, name: str) -> None:
    lp = api.ask(logprobs=2).raw.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 8
    assert all(len(top) == 2 for top in lp.top_logprobs)


COMMON = {"max_tokens": _max_tokens, "temperature": _temperature, "seed": _seed, "top_p": _top_p, "stop": _stop,
          "stream": _stream, "stream_options": _stream_options, "presence_penalty": _penalty,
          "frequency_penalty": _penalty, "logit_bias": _logit_bias, "user": _user, "model": _model}
TAKEN = {Chat: {**COMMON, "messages": _messages, "max_completion_tokens": _max_tokens, "logprobs": _chat_logprobs,
                "top_logprobs": _chat_logprobs},
         Text: {**COMMON, "prompt": _prompt, "logprobs": _text_logprobs}}

# Refused, each with a value a client would send to use it. A default value (n=1, echo=false,
# best_of=1, response_format text) changes nothing and is taken.
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
REFUSED = {
    Chat: {"n": 2, "response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "auto",
           "parallel_tool_calls": True, "functions": [{"name": "f", "parameters": {}}], "function_call": "auto",
           "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"], "metadata": {"k": "v"},
           "store": True, "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low",
           "service_tier": "auto", "verbosity": "low", "web_search_options": {}, "safety_identifier": "u1",
           "prompt_cache_key": "k", "prompt_cache_retention": "24h", "prompt_cache_options": {},
           "moderation": {}},
    Text: {"n": 2, "best_of": 2, "echo": True, "suffix": "the end"},
}


@pytest.mark.parametrize("api_kind", [Chat, Text], ids=["chat", "completions"])
def test_every_client_parameter_is_taken_with_an_effect_or_refused_by_name(served, api_kind):
    api = api_kind(served)
    undecided = api.params - TAKEN[api_kind].keys() - REFUSED[api_kind].keys()
    assert not undecided, f"the openai client has parameters this server has not decided on: {sorted(undecided)}"
    # The server takes no field without an effect checked here.
    assert api.accepted <= TAKEN[api_kind].keys() | {"n", "best_of", "echo", "response_format"}
    for name, value in REFUSED[api_kind].items():
        with pytest.raises(openai.BadRequestError) as e:
            api.ask(**{name: value})
        assert e.value.body["param"] == name and name in e.value.body["message"], name
    for name, effect in TAKEN[api_kind].items():
        effect(api, name)


def test_default_values_of_refused_parameters_are_taken(served):
    chat, text = Chat(served), Text(served)
    plain = chat.ask().text
    assert chat.ask(n=1, response_format={"type": "text"}, logprobs=False).text == plain
    assert text.ask(n=1, best_of=1, echo=False).text == text.ask().text


@pytest.mark.parametrize("body, param", [
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"), ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": "1"}, "frequency_penalty"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"response_format": {"type": "json_schema"}},
                                                              "response_format"),
    ({"tools": []}, "tools"), ({"max_completion_tokens": 4}, "max_tokens"),
], ids=lambda v: str(v))
def test_bad_values_name_their_parameter(served, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        Chat(served).ask(**body)
    assert e.value.body["param"] == param and "\n" not in e.value.body["message"]
