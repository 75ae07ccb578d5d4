"""Chat-format input: check a `messages` list, render it with the model's chat template.

The same shape as `aapp prune`'s chat input is meant to have (validation, then `render`), so the
two can become one module.
"""

from __future__ import annotations

from aapp.errors import InputError

ROLES = ("system", "developer", "user", "assistant")


class ChatError(InputError):
    """A `messages` list the server cannot render; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message)
        self.param = param


def validate(messages, max_messages: int) -> list[dict]:
    """Plain {"role", "content": str} dicts, or ChatError. Content may be a string or a list of
    text parts (what the OpenAI clients send); "developer" is OpenAI's newer name for "system"."""
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
        out.append({"role": "system" if role == "developer" else role, "content": _text(m.get("content"), where)})
    return out


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ChatError(f"{where}.content[{j}] must be a text part ({{'type': 'text', 'text': ...}})",
                                f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise ChatError(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def render(tokenizer, messages: list[dict]) -> str:
    """The prompt text the model sees, with the generation prompt appended."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the model has no chat template; chat messages cannot be rendered for it")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:  # the template's own raise_exception, e.g. roles out of the order it accepts
        raise ChatError(f"the model's chat template rejected these messages: {str(e).splitlines()[0] if str(e) else 'no reason given'}") from None
