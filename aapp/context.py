"""Prompts against the model's context window: refuse the ones that do not fit, or cut them.

A prompt whose tokens plus the tokens to generate exceed the positions a model was trained
for still runs, silently, and yields garbage. So each such prompt gets one line on stderr
and is either left out (the default) or, with `truncate`, cut from the front to fit: the
end of a prompt holds the request, and the chat template around it stays whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from aapp.chat import ChatInput, render_all
from aapp.console import warn
from aapp.errors import InputError
from aapp.prompts import Prompt


def prompt_tokens(tokenizer, text: ChatInput) -> int:
    """Tokens the model reads for `text` (a prompt or conversation) once rendered as generation does
    (template, BOS)."""
    rendered, templated = render_all(tokenizer, [text])
    return len(tokenizer(rendered[0], add_special_tokens=not templated).input_ids)


def fit_to_context(prompts: Sequence[Prompt], tokenizer, context: int | None, max_new_tokens: int,
                   truncate: bool = False) -> list[Prompt]:
    """The prompts that fit `context` with `max_new_tokens` to spare; truncated ones carry `truncated`."""
    if context is None:
        return list(prompts)
    overhead = prompt_tokens(tokenizer, "")
    room = context - max_new_tokens - overhead
    if room < 1:
        raise InputError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in a context of {context}")
    kept = []
    for p in prompts:
        n = prompt_tokens(tokenizer, p.input)
        if n + max_new_tokens <= context:
            kept.append(p)
            continue
        what = f"prompt {p.id}: {n} tokens + {max_new_tokens} to generate exceed the model's context of {context}"
        if not truncate:
            warn(f"{what}; left out (the truncate option keeps its last tokens instead)")
            continue
        if p.messages is not None:
            # Which turn to cut is the user's call: the front of a conversation may hold its instructions.
            warn(f"{what}; left out (the truncate option cuts plain prompts, not conversations)")
            continue
        cut = _cut_front(tokenizer, p.text, room, overhead)
        cut_tokens = prompt_tokens(tokenizer, cut)
        warn(f"{what}; cut to its last {cut_tokens - overhead} tokens")
        kept.append(replace(p, text=cut, truncated=n - cut_tokens))
    if prompts and not kept:
        raise InputError(f"no prompt fits the model's context of {context} tokens (the truncate option cuts them to fit)")
    return kept


def _cut_front(tokenizer, text: str, room: int, overhead: int) -> str:
    """The longest tail of `text` that renders within `room` tokens plus the template's `overhead`."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    budget = overhead + room
    keep = room
    while True:
        cut = tokenizer.decode(ids[max(0, len(ids) - keep):])
        excess = prompt_tokens(tokenizer, cut) - budget
        if excess <= 0 or keep <= 1:
            return cut
        keep = max(1, keep - excess)  # decoding then encoding again can merge or split a token at the seams
