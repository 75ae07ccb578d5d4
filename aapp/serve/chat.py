"""The server's view of chat input: OpenAI's `messages` checked field by field, so that a 400 names
the offending field (`param`), then read and rendered as `aapp prune` reads them (aapp.chat).
"""

from __future__ import annotations

from aapp import chat
from aapp.errors import InputError

# "developer" is OpenAI's newer name for "system".
ROLES = (*chat.ROLES, "developer")


class ChatError(InputError):
    """A `messages` list the server cannot render; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message)
        self.param = param


def validate(messages, max_messages: int) -> chat.Conversation:
    """The conversation `messages` hold, or ChatError naming the field at fault."""
    if not isinstance(messages, list):
        raise ChatError("'messages' must be a list of message objects")
    if not messages:
        raise ChatError("'messages' must not be empty")
    if len(messages) > max_messages:
        raise ChatError(f"'messages' has {len(messages)} entries; at most {max_messages} are allowed")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ChatError(f"{where} must be an object", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ChatError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        content = m.get("content")
        try:
            # Any string is content, "" too (OpenAI takes it; garak's test.Blank probe sends it).
            content = content if isinstance(content, str) else chat.content_text(content, where)
        except InputError as e:
            raise ChatError(str(e), f"{where}.content") from None
        out.append(chat.Message("system" if role == "developer" else role, content))
    try:
        chat.check_conversation(tuple(out), "messages")
    except InputError as e:
        raise ChatError(str(e)) from None
    return tuple(out)


def render(tokenizer, messages: chat.Conversation) -> str:
    """The prompt text the model sees, with the generation prompt appended."""
    return chat.render(tokenizer, messages)
