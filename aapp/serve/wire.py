"""OpenAI's answers: whole responses and stream chunks of chat and legacy completions, each with its
own logprobs shape, and the `aapp` object that says what pruning did to the answer."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from aapp.serve.generate import Outcome, Piece, TokenLogprob
from aapp.serve.tokens import TokenBytes


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass(frozen=True)
class Answer:
    """One answer's framing: what each of its chunks repeats, and how its tokens are named."""

    id: str
    created: int
    model: str
    tokens: TokenBytes
    object = ""

    def _frame(self, object: str, choices: list) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices}

    def usage_chunk(self, outcome: Outcome) -> dict:
        """The stream's last chunk under stream_options.include_usage: no choices, the usage."""
        return {**self._frame(self.object, []), "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)}


class ChatAnswer(Answer):
    object = "chat.completion.chunk"

    @classmethod
    def new(cls, model: str, tokens: TokenBytes) -> ChatAnswer:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model, tokens)

    def whole(self, outcome: Outcome, info: dict) -> dict:
        choice = {"index": 0, "message": {"role": "assistant", "content": outcome.text},
                  "logprobs": self._logprobs(outcome.logprobs), "finish_reason": outcome.finish_reason}
        return {**self._frame("chat.completion", [choice]),
                "usage": usage(outcome.prompt_tokens, outcome.completion_tokens), "aapp": info}

    def opening(self) -> dict | None:
        return self._chunk({"role": "assistant", "content": ""})

    def piece(self, piece: Piece, logprobs: bool) -> dict:
        return self._chunk({"content": piece.text}, self._logprobs(piece.logprobs if logprobs else None))

    def closing(self, finish_reason: str, info: dict) -> dict:
        """The chunk with `finish_reason`; it also carries the `aapp` object."""
        return {**self._chunk({}, finish_reason=finish_reason), "aapp": info}

    def _chunk(self, delta: dict, logprobs: dict | None = None, finish_reason: str | None = None) -> dict:
        return self._frame(self.object, [{"index": 0, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish_reason}])

    def _logprobs(self, scored: tuple[TokenLogprob, ...] | None) -> dict | None:
        if scored is None:
            return None
        return {"content": [{**self._token(t.token_id, t.logprob),
                             "top_logprobs": [self._token(i, lp) for i, lp in t.top]} for t in scored],
                "refusal": None}

    def _token(self, token_id: int, logprob: float) -> dict:
        return {"token": self.tokens.name(token_id), "logprob": logprob, "bytes": list(self.tokens.bytes(token_id))}


class TextAnswer(Answer):
    """A legacy completion: the same object for the whole answer and its chunks."""

    object = "text_completion"

    @classmethod
    def new(cls, model: str, tokens: TokenBytes) -> TextAnswer:
        return cls(f"cmpl-{uuid.uuid4().hex}", int(time.time()), model, tokens)

    def whole(self, outcome: Outcome, info: dict) -> dict:
        choice = self._choice(outcome.text, outcome.logprobs, outcome.finish_reason)
        return {**self._frame(self.object, [choice]),
                "usage": usage(outcome.prompt_tokens, outcome.completion_tokens), "aapp": info}

    def opening(self) -> dict | None:
        return None  # a legacy stream has no role chunk

    def piece(self, piece: Piece, logprobs: bool) -> dict:
        return self._frame(self.object, [self._choice(piece.text, piece.logprobs if logprobs else None, None)])

    def closing(self, finish_reason: str, info: dict) -> dict:
        return {**self._frame(self.object, [self._choice("", None, finish_reason)]), "aapp": info}

    def _choice(self, text: str, scored: tuple[TokenLogprob, ...] | None, finish_reason: str | None) -> dict:
        return {"text": text, "index": 0, "logprobs": self._logprobs(scored), "finish_reason": finish_reason}

    def _logprobs(self, scored: tuple[TokenLogprob, ...] | None) -> dict | None:
        if scored is None:
            return None
        name = self.tokens.name
        return {"tokens": [name(t.token_id) for t in scored], "token_logprobs": [t.logprob for t in scored],
                "top_logprobs": [{name(i): lp for i, lp in t.top} for t in scored],
                "text_offset": [t.offset for t in scored]}
