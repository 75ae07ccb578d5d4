"""OpenAI's requests (chat completions and legacy completions) checked field by field, and its errors.

Checked by hand rather than by a model class so that each refusal names its field the way OpenAI's
error body does (`param`), and so that a wrong type is refused, never coerced ("5" is not 5).
Every field is read or refused: a field the server does not implement (`tools`, `response_format`
json, ...) is a 400 naming it, never accepted without effect, as OpenAI itself refuses a field it
does not know. A null field is an absent one. aapp.serve.wire writes the answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from aapp.chat import Conversation
from aapp.serve.chat import ChatError, validate


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Over a cap is a 400 (413 for the body), never a truncation."""

    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_stop: int = 4  # OpenAI's own cap on `stop`
    max_top_logprobs: int = 20  # OpenAI's: chat's `top_logprobs`
    max_text_logprobs: int = 5  # OpenAI's: legacy completions' `logprobs`
    max_logit_bias: int = 300


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none asked; k: each token's logprob and the k likeliest at its place


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Conversation  # checked and read as `aapp prune` reads chat rows (aapp.chat)
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with `usage`
    user: str | None = None  # the caller's end user, written to the request's log line


@dataclass(frozen=True)
class TextRequest:
    """A legacy completion: a plain prompt, continued as it is (no chat template)."""

    model: str
    prompt: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    user: str | None = None


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Each endpoint's fields; any other field is refused by name.
_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n", "logprobs",
           "presence_penalty", "frequency_penalty", "logit_bias", "user"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format"}
TEXT_FIELDS = _COMMON | {"prompt", "best_of", "echo"}


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """A checked chat-completions request, or ApiError(400) naming the first field at fault."""
    data = _object(body, CHAT_FIELDS)
    model = _model(data)
    try:
        messages = validate(data.get("messages"), limits.max_messages)
    except ChatError as e:
        raise ApiError(400, str(e), param=e.param) from None
    _response_format(data)
    max_tokens = _opt(data, "max_completion_tokens", int, None)
    if _opt(data, "max_tokens", int, max_tokens) != max_tokens and max_tokens is not None:
        raise ApiError(400, "'max_tokens' and 'max_completion_tokens' disagree; give one", param="max_tokens")
    max_tokens = _opt(data, "max_tokens", int, max_tokens)
    logprobs = _chat_logprobs(data, limits)
    sampling = _sampling(data, limits, max_tokens, logprobs)
    stream, include_usage = _stream(data)
    return ChatRequest(model, messages, sampling, stream, include_usage, _opt(data, "user", str, None))


def parse_text_request(body: bytes, limits: Limits) -> TextRequest:
    """A checked legacy completions request, or ApiError(400) naming the first field at fault."""
    data = _object(body, TEXT_FIELDS)
    model = _model(data)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # one prompt in a list, as some clients send it
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string (several prompts and token arrays are not supported)",
                       param="prompt")
    if _opt(data, "best_of", int, 1) != 1:
        raise ApiError(400, "only best_of=1 is supported", param="best_of")
    if _opt(data, "echo", bool, False):
        raise ApiError(400, "'echo' is not supported: the answer holds the completion only", param="echo")
    logprobs = _opt(data, "logprobs", int, None)
    if logprobs is not None and not 0 <= logprobs <= limits.max_text_logprobs:
        raise ApiError(400, f"'logprobs' must be in [0, {limits.max_text_logprobs}], got {logprobs}", param="logprobs")
    # OpenAI's default for legacy completions is 16 tokens.
    sampling = _sampling(data, limits, _opt(data, "max_tokens", int, min(16, limits.max_tokens)), logprobs)
    stream, include_usage = _stream(data)
    return TextRequest(model, prompt, sampling, stream, include_usage, _opt(data, "user", str, None))


def check_token_ids(sampling: Sampling, vocab_size: int) -> None:
    """`logit_bias` names tokens of this model's vocabulary only."""
    for token, _ in sampling.logit_bias:
        if not 0 <= token < vocab_size:
            raise ApiError(400, f"'logit_bias' names token {token}, outside this model's vocabulary of {vocab_size}",
                           param="logit_bias")


def _object(body: bytes, fields: set[str]) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    for key in sorted(data):
        if key not in fields and data[key] is not None:
            raise ApiError(400, f"'{key}' is not supported by this server", param=key, code="unsupported_parameter")
    return data


def _model(data: dict) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    return model


def _response_format(data: dict) -> None:
    """Plain text is what the server writes anyway; JSON output it cannot promise (nothing constrains decoding)."""
    kind = _opt(data, "response_format", dict, {"type": "text"}).get("type")
    if kind != "text":
        raise ApiError(400, f"response_format {json.dumps(kind)} is not supported: only text (decoding is not "
                       "constrained to JSON)", param="response_format")


def _chat_logprobs(data: dict, limits: Limits) -> int | None:
    asked = _opt(data, "logprobs", bool, False)
    top = _opt(data, "top_logprobs", int, None)
    if top is not None and not asked:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    if top is not None and not 0 <= top <= limits.max_top_logprobs:
        raise ApiError(400, f"'top_logprobs' must be in [0, {limits.max_top_logprobs}], got {top}",
                       param="top_logprobs")
    return (top or 0) if asked else None


def _sampling(data: dict, limits: Limits, max_tokens: int | None, logprobs: int | None) -> Sampling:
    if _opt(data, "n", int, 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"'max_tokens' must be in [1, {limits.max_tokens}], got {max_tokens}", param="max_tokens")
    temperature = _opt(data, "temperature", float, 1.0)  # OpenAI's default: sampling
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"'temperature' must be in [0, 2], got {temperature}", param="temperature")
    top_p = _opt(data, "top_p", float, 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    return Sampling(max_tokens, float(temperature), float(top_p), _opt(data, "seed", int, None),
                    _stops(data.get("stop"), limits), _penalty(data, "presence_penalty"),
                    _penalty(data, "frequency_penalty"), _logit_bias(data, limits), logprobs)


def _penalty(data: dict, key: str) -> float:
    value = _opt(data, key, float, 0.0)
    if not -2 <= value <= 2:
        raise ApiError(400, f"'{key}' must be in [-2, 2], got {value}", param=key)
    return float(value)


def _logit_bias(data: dict, limits: Limits) -> tuple[tuple[int, float], ...]:
    bias = _opt(data, "logit_bias", dict, {})
    if len(bias) > limits.max_logit_bias:
        raise ApiError(400, f"'logit_bias' takes at most {limits.max_logit_bias} tokens", param="logit_bias")
    out = []
    for key, value in bias.items():
        if not key.isdigit():
            raise ApiError(400, f"'logit_bias' keys are token ids, got {key!r}", param="logit_bias")
        value = _opt(bias, key, float, None, "logit_bias")
        if value is None or not -100 <= value <= 100:
            raise ApiError(400, f"'logit_bias' values must be in [-100, 100], got {value}", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


def _stream(data: dict) -> tuple[bool, bool]:
    stream = _opt(data, "stream", bool, False)
    options = _opt(data, "stream_options", dict, None) or {}
    return stream, _opt(options, "include_usage", bool, False, "stream_options.include_usage")


def _opt(data: dict, key: str, kind: type, default, param: str | None = None):
    value = data.get(key)
    if value is None:
        return default
    # bool is an int to Python, not to JSON; and a float field takes an integer, as JSON numbers do.
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
    if not ok:
        names = {bool: "a boolean", int: "an integer", float: "a number", dict: "an object", str: "a string"}
        raise ApiError(400, f"'{param or key}' must be {names[kind]}, got {json.dumps(value)[:80]}", param=param or key)
    return value


def _stops(stop, limits: Limits) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", param="stop")
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"'stop' takes at most {limits.max_stop} sequences", param="stop")
    return tuple(stops)


