"""Domain errors, and the "did you mean" hint their messages share. The CLI turns any AappError
into one line on stderr and exit code 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AappError(Exception):
    """A problem the user can fix: bad input, a missing model, a mismatched file."""


class InputError(AappError):
    """Malformed or unreadable user input (prompt files, generation files, options)."""


class ModelError(AappError):
    """A model that cannot be found, fetched, verified or adapted."""


class CalibrationError(AappError):
    """A calibration file that is missing, malformed or made for another model."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (aapp.cli turns both into this). Not an AappError: the user stopped
    the run, and the exit code is 128 + the signal. `note` says what was kept, in one line; `kept`
    counts the output rows kept, where a writer kept some."""

    def __init__(self, signum: int, note: str = "", kept: int | None = None):
        super().__init__(signum, note)
        self.signum, self.note, self.kept = signum, note, kept


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the choices `word` most likely meant, or "" when none is close.

    For an error line: f"unknown alias {word!r}{did_you_mean(word, aliases)}; known: ...". A
    prefix of choices counts (`smollm2` -> `smollm2-135m-instruct`, up to three), else the
    closest spelling by difflib (`qwen2.5-coder-0.5b-instrct` -> the alias).
    """
    choices = list(dict.fromkeys(choices))
    key = word.strip().lower()
    if not key:
        return ""
    matches = [c for c in choices if c.lower().startswith(key)][:3]
    if not matches:
        lowered = {c.lower(): c for c in choices}
        matches = [lowered[m] for m in difflib.get_close_matches(key, list(lowered), n=1, cutoff=0.6)]
    if not matches:
        return ""
    quoted = [repr(m) for m in matches]
    said = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f" (did you mean {said}?)"
