"""Chat-format prompts: OpenAI-style `messages`, checked once and rendered with the model's template.

A conversation is a tuple of `Message`s: an optional system message first, then user and
assistant turns that alternate, ending with a user turn (the model answers it). Content is a
string, or a list of OpenAI text parts (`{"type": "text", "text": ...}`) joined by newlines;
images and other parts are refused. A plain prompt is a conversation of one user turn.

Rendering goes through the tokenizer's own chat template. A template with no system role
either raises (Gemma-2's) or drops the system message without a word (some ChatML-like
ones); either way the system message is folded into the first user turn, as Gemma-3's own
template does ("SYSTEM\\n\\nUSER"), so its instructions still reach the model. A model with no
chat template (a base model) cannot read a conversation: that is an error, while a plain
prompt there is used as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aapp.errors import InputError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = tuple[Message, ...]
#: What generation renders: a plain prompt (one user turn) or a conversation.
ChatInput = str | Conversation


def parse_messages(value: object, where: str) -> Conversation:
    """Check OpenAI-style `messages` (a list of {role, content}) and return them as a Conversation."""
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, Mapping):
            raise InputError(f"{at}: expected an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise InputError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        out.append(Message(role, content_text(m.get("content"), at)))
    check_conversation(tuple(out), where)
    return tuple(out)


def content_text(value: object, at: str) -> str:
    """A message's content as text: a string, or OpenAI text parts joined by newlines."""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InputError(f"{at}: content part {kind!r} is not supported (only text parts)")
            texts.append(part["text"])
        value = "\n".join(texts)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{at}: 'content' must be a non-empty string or a list of text parts")
    return value


def check_conversation(messages: Conversation, where: str) -> None:
    """System first if at all; then user and assistant alternating, from a user turn to a user turn."""
    turns = messages[1:] if messages and messages[0].role == "system" else messages
    if not turns:
        raise InputError(f"{where}: 'messages' has no user message")
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            if m.role == "system":
                raise InputError(f"{where}: a system message may only come first")
            raise InputError(f"{where}: turns must alternate user/assistant, starting with user; "
                             f"turn {i + 1} is {m.role}")
    if turns[-1].role != "user":
        raise InputError(f"{where}: the last message must be from the user (the model answers it)")


def last_user(messages: Conversation) -> str:
    """The request a conversation ends with: what a row's `prompt` shows and a judge reads."""
    return messages[-1].content


def as_conversation(item: ChatInput) -> Conversation:
    return (Message("user", item),) if isinstance(item, str) else item


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, item: ChatInput) -> str:
    """The text the model reads for a prompt or conversation, ending with the assistant's cue.

    A plain prompt on a model with no chat template is returned as it is (the caller then
    tokenizes with special tokens, see `render_all`).
    """
    if not has_template(tokenizer):
        if isinstance(item, str):
            return item
        raise InputError(f"chat-format prompts need a chat template, and {_name(tokenizer)} has none; "
                         "give plain prompts instead")
    messages = as_conversation(item)
    system = messages[0].content if messages[0].role == "system" else None
    if system is None:
        return _apply(tokenizer, messages)
    try:
        text = _apply(tokenizer, messages)
        if system.strip() in text:
            return text
    except InputError:
        pass
    return _apply(tokenizer, fold_system(messages))


def render_all(tokenizer, items: Sequence[ChatInput]) -> tuple[list[str], bool]:
    """Render a batch; also whether a template was used (it then holds BOS where a family wants one,
    so tokenization must add no special tokens)."""
    return [render(tokenizer, item) for item in items], has_template(tokenizer)


def fold_system(messages: Conversation) -> Conversation:
    """The system message put before the first user turn's text, for templates with no system role."""
    system, first, rest = messages[0], messages[1], messages[2:]
    return (Message("user", f"{system.content.strip()}\n\n{first.content}"), *rest)


def _apply(tokenizer, messages: Conversation) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template([m.to_dict() for m in messages], tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as e:  # the template's own raise_exception(...), e.g. "System role not supported"
        raise InputError(f"{_name(tokenizer)}'s chat template refused the messages: {e}") from None


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or "the model"
