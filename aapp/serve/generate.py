"""One request's decode loop: prefill, then token by token with greedy or seeded sampling, OpenAI's
penalties and logit bias, logprobs, stop strings, streaming and cancellation.

Unlike aapp.generation's batch loop, this one runs a single sequence (no padding: its tokens are
what it would get alone, by construction) and hands text out as it is made. It calls the model's
own forward, so a pruned model decodes through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, SequenceBiasLogitsProcessor

from aapp.generation import eos_ids
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


@torch.inference_mode()
def generate(model, tokenizer, input_ids: torch.Tensor, sampling: Sampling,
             on_text: Callable[[Piece], None] | None = None,
             cancelled: Callable[[], bool] = lambda: False) -> Outcome:
    """Decode `input_ids` [1, S]. `on_text` gets each new piece of text once no stop string can
    still begin in it and no character is left incomplete; `cancelled` is polled before every step."""
    device = input_ids.device
    stops = set(eos_ids(model, tokenizer))
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=device)
        # Unseeded requests sample from fresh entropy, never from a state other requests moved.
        generator.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(8), "little"))
    hold = max((len(s) for s in sampling.stop), default=1) - 1
    cache = {cache_kwarg(model): new_cache(model)}
    n_prompt = input_ids.shape[1]
    attn = torch.ones_like(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=torch.arange(n_prompt, device=device)[None],
                   **cache, use_cache=True, logits_to_keep=1).logits
    process = processors(sampling)
    tokens: list[int] = []
    scored: list[TokenLogprob] = []
    text, sent, told, reason = "", 0, 0, "length"
    cut = None  # where a stop string cut the text
    for step in range(sampling.max_tokens):
        if cancelled():
            reason = "cancelled"
            break
        scores = process(torch.tensor([tokens], dtype=torch.long, device=device), logits[:, -1].float())
        tok = next_token(scores[0], sampling, generator)
        if tok in stops:
            tokens.append(tok)
            reason = "stop"
            break
        if sampling.logprobs is not None:
            scored.append(token_logprob(logits[0, -1], tok, sampling.logprobs, len(text)))
        tokens.append(tok)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _first_stop(text, sampling.stop, max(0, sent - hold))
        if cut is not None:
            text, reason = text[:cut], "stop"
            break
        # Hold back what a stop string may still start in, and a multi-byte character still incomplete.
        safe = _complete(text, len(text) - hold)
        if on_text and safe > sent:
            on_text(Piece(text[sent:safe], tuple(scored[told:])))
            sent, told = safe, len(scored)
        if step == sampling.max_tokens - 1:
            break
        attn = torch.cat([attn, attn[:, :1]], dim=1)
        logits = model(input_ids=torch.tensor([[tok]], device=device), attention_mask=attn,
                       position_ids=torch.tensor([[n_prompt + step]], device=device), **cache, use_cache=True).logits
    if cut is None:  # a character whose last bytes were never generated is dropped, not sent broken (U+FFFD)
        text = text[:_complete(text, len(text))]
    if reason != "cancelled" and on_text and (len(text) > sent or len(scored) > told):
        on_text(Piece(text[sent:], tuple(scored[told:])))
    return Outcome(text, reason, n_prompt, len(tokens), tuple(scored) if sampling.logprobs is not None else None)


def _complete(text: str, end: int) -> int:
    """`end`, moved back past the U+FFFD that the tokenizer decodes an incomplete character's bytes to."""
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    return end


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None
