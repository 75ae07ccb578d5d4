"""The OpenAI chat-completions wire format: a request checked field by field, responses, chunks, errors.

Checked by hand rather than by a model class so that each refusal names its field the way OpenAI's
error body does (`param`), and so that a wrong type is refused, never coerced ("5" is not 5).
Fields we do not read (`user`, `logprobs`, ...) are ignored, as the OpenAI clients send some by default.
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


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: Conversation  # checked and read as `aapp prune` reads chat rows (aapp.chat)
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with `usage`


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


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """A checked request, or ApiError(400) naming the first field at fault."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    try:
        messages = validate(data.get("messages"), limits.max_messages)
    except ChatError as e:
        raise ApiError(400, str(e), param=e.param) from None
    n = _opt(data, "n", int, 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = _opt(data, "max_completion_tokens", int, None)
    max_tokens = _opt(data, "max_tokens", int, max_tokens)
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
    seed = _opt(data, "seed", int, None)
    stream = _opt(data, "stream", bool, False)
    options = _opt(data, "stream_options", dict, None) or {}
    include_usage = _opt(options, "include_usage", bool, False, "stream_options.include_usage")
    return ChatRequest(model, messages, Sampling(max_tokens, float(temperature), float(top_p), seed,
                                                 _stops(data.get("stop"), limits)), stream, include_usage)


def _opt(data: dict, key: str, kind: type, default, param: str | None = None):
    value = data.get(key)
    if value is None:
        return default
    # bool is an int to Python, not to JSON; and a float field takes an integer, as JSON numbers do.
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) if kind is float else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
    if not ok:
        names = {bool: "a boolean", int: "an integer", float: "a number", dict: "an object"}
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


def completion(id: str, created: int, model: str, text: str, finish_reason: str, usage: dict, aapp: dict) -> dict:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage, "aapp": aapp}


def chunk(id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
          usage: dict | None = None, aapp: dict | None = None) -> dict:
    """One server-sent event's payload; the last one (with `finish_reason`) also carries the `aapp` object."""
    out = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
        out["choices"] = []
    if aapp is not None:
        out["aapp"] = aapp
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
