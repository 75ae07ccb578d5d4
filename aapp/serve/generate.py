"""The serving decode loop: one batch of requests, prefill, then token by token, each row with its own
greedy or seeded sampling, OpenAI's penalties and logit bias, logprobs, stop strings, streaming and
cancellation.

Unlike aapp.generation's batch loop (one setting for the batch, greedy), each row here is a request
of its own and hands its text out as it is made. It calls the model's own forward, so a pruned model
decodes through the same code. A batch of one is unpadded, so its tokens are what the request gets
alone by construction; batched rows are left-padded, and whether their tokens stay their own is the
caller's matter (aapp.serve.policy batches only where the method's selection is per row).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, SequenceBiasLogitsProcessor

from aapp.generation import eos_ids, positions
from aapp.models.kv_cache import cache_kwarg, new_cache
from aapp.serve.schemas import Sampling


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model's own scores (before temperature,
    penalties and logit_bias), and the `top` most likely tokens at its place."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    offset: int  # where its text starts in the completion's text


@dataclass(frozen=True)
class Piece:
    """What a stream hands out at once: new text, and the tokens generated since the last piece."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_tokens) or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked for them; EOS is not listed


class Penalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties: each token's logit lowers by `frequency` for every time
    it was generated so far and by `presence` once it was. Counted over the completion, not the prompt
    (as vLLM does): `input_ids` holds the generated tokens only."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # input_ids: [1, T] generated so far; scores: [1, V]
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, torch.ones_like(input_ids, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def processors(sampling: Sampling) -> LogitsProcessorList:
    """What changes the model's scores before a token is picked; empty for a plain request, so its tokens
    are exactly the unprocessed model's."""
    out = LogitsProcessorList()
    if sampling.presence_penalty or sampling.frequency_penalty:
        out.append(Penalties(sampling.presence_penalty, sampling.frequency_penalty))
    if sampling.logit_bias:
        out.append(SequenceBiasLogitsProcessor([[[token], bias] for token, bias in sampling.logit_bias]))
    return out


def token_logprob(logits: torch.Tensor, token: int, top: int, offset: int) -> TokenLogprob:
    """logits: [V], the model's own for the position `token` was picked at."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(top)
    return TokenLogprob(token, float(logp[token]), tuple(zip(ids.tolist(), values.tolist())), offset)


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """logits: [V] for the last position."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_p.cumsum(0) - sorted_p >= sampling.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to decode: its prompt, its own settings, where its text goes and whether its client left."""

    input_ids: torch.Tensor  # [1, S]
    sampling: Sampling
    on_text: Callable[[Piece], None] | None = None
    cancelled: Callable[[], bool] = lambda: False


class _Row:
    """One request's side of a batch's decode loop: its sampler, tokens, text, stop strings and stream.
    `step` takes the model's logits at its last place and says whether the row is done."""

    def __init__(self, request: DecodeRequest, tokenizer, stops: set[int]):
        self.request, self.tokenizer, self.stops = request, tokenizer, stops
        sampling = request.sampling
        self.generator = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device=request.input_ids.device)
            # Unseeded requests sample from fresh entropy, never from a state other requests moved.
            seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little")
            self.generator.manual_seed(seed)
        self.process = processors(sampling)
        self.hold = max((len(s) for s in sampling.stop), default=1) - 1
        self.tokens: list[int] = []
        self.scored: list[TokenLogprob] = []
        self.text, self.sent, self.told, self.reason = "", 0, 0, "length"
        self.cut: int | None = None  # where a stop string cut the text
        self.done = False

    @property
    def feed(self) -> int | None:
        """The token the next forward reads for this row (None: it has none yet)."""
        return self.tokens[-1] if self.tokens else None

    def step(self, logits: torch.Tensor) -> bool:
        """logits: [V], the model's own at this row's last place. Picks, records and streams one token."""
        sampling, device = self.request.sampling, logits.device
        if self.request.cancelled():
            self.reason, self.done = "cancelled", True
            return True
        scores = self.process(torch.tensor([self.tokens], dtype=torch.long, device=device), logits[None].float())
        tok = next_token(scores[0], sampling, self.generator)
        self.tokens.append(tok)
        if tok in self.stops:
            self.reason, self.done = "stop", True
            return True
        if sampling.logprobs is not None:
            self.scored.append(token_logprob(logits, tok, sampling.logprobs, len(self.text)))
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.cut = _first_stop(self.text, sampling.stop, max(0, self.sent - self.hold))
        if self.cut is not None:
            self.text, self.reason, self.done = self.text[: self.cut], "stop", True
            return True
        # Hold back what a stop string may still start in, and a multi-byte character still incomplete.
        safe = _complete(self.text, len(self.text) - self.hold)
        if self.request.on_text and safe > self.sent:
            self.request.on_text(Piece(self.text[self.sent : safe], tuple(self.scored[self.told :])))
            self.sent, self.told = safe, len(self.scored)
        self.done = len(self.tokens) == sampling.max_tokens
        return self.done

    def finish(self) -> Outcome:
        """The row's outcome, its last text streamed (not a cancelled row's: its client has gone)."""
        text, on_text = self.text, self.request.on_text
        if self.cut is None:  # a character whose last bytes were never generated is dropped, not sent broken (U+FFFD)
            text = text[: _complete(text, len(text))]
        if self.reason != "cancelled" and on_text and (len(text) > self.sent or len(self.scored) > self.told):
            on_text(Piece(text[self.sent :], tuple(self.scored[self.told :])))
        logprobs = tuple(self.scored) if self.request.sampling.logprobs is not None else None
        return Outcome(text, self.reason, int(self.request.input_ids.shape[1]), len(self.tokens), logprobs)


@torch.inference_mode()
def generate(model, tokenizer, requests: list[DecodeRequest]) -> list[Outcome]:
    """Decode `requests` together: one left-padded prefill and one KV cache, each row with its own
    sampling, stops, logprobs, stream and cancellation. `on_text` gets each new piece of text once no
    stop string can still begin in it and no character is left incomplete; `cancelled` is polled before
    every step. A finished or cancelled row keeps its slot (the engine's per-row masks are set for the
    batch's rows) and reads its last token again, unused, until every row is done; its text stops there.
    A batch of one has no padding: its forward is exactly the unbatched one."""
    device = requests[0].input_ids.device
    stops = set(eos_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    input_ids, attn = _left_padded([r.input_ids[0] for r in requests], pad, device)
    pos = positions(attn)
    cache = {cache_kwarg(model): new_cache(model)}
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, **cache, use_cache=True,
                   logits_to_keep=1).logits  # [B, 1, V]
    rows = [_Row(r, tokenizer, stops) for r in requests]
    while True:
        for b, row in enumerate(rows):
            if not row.done:
                row.step(logits[b, -1])
        if all(row.done for row in rows):
            break
        feed = torch.tensor([[pad if row.feed is None else row.feed] for row in rows], device=device)
        attn = torch.cat([attn, attn.new_ones(len(rows), 1)], dim=1)
        pos = pos[:, -1:] + 1
        logits = model(input_ids=feed, attention_mask=attn, position_ids=pos, **cache, use_cache=True).logits
    return [row.finish() for row in rows]


def _left_padded(prompts: list[torch.Tensor], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts: each [S_i] -> input_ids and attention mask [B, max S_i], padded on the left."""
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
    attn = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[0] :] = p
        attn[b, width - p.shape[0] :] = 1
    return ids, attn


def _complete(text: str, end: int) -> int:
    """`end`, moved back past the U+FFFD that the tokenizer decodes an incomplete character's bytes to."""
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return end


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None
