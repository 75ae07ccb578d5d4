"""A token's own bytes and its name in OpenAI's logprobs (`token`, `bytes`).

A character can span tokens (a byte-level BPE vocabulary splits what it has no merge for into
bytes), so a token alone may be part of a character: decoding it alone gives U+FFFD and loses
the bytes a client needs to join it with its neighbours. The bytes come from the vocabulary:
byte-level vocabularies (GPT-2's, Qwen's, Llama-3's) spell each byte as one printable character,
SentencePiece's byte fallback spells it `<0xAB>`; any other token is its decoded text.
"""

from __future__ import annotations

import re

from tokenizers import decoders

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (its `bytes_to_unicode`): printable Latin-1 bytes stand
    for themselves, the rest are moved past 255 in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(moved)}}


class TokenBytes:
    """`tokenizer`'s tokens as bytes and as OpenAI names them, one lookup per id, cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._alphabet = (_byte_level_alphabet() if backend is not None and isinstance(backend.decoder, decoders.ByteLevel)
                          else None)
        self._cache: dict[int, bytes] = {}

    def bytes(self, token_id: int) -> bytes:
        if token_id not in self._cache:
            self._cache[token_id] = self._lookup(token_id)
        return self._cache[token_id]

    def name(self, token_id: int) -> str:
        """The token's text; a part of a character is named by its bytes, as OpenAI does (`bytes:\\xe2\\x80`)."""
        raw = self.bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def _lookup(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if self._alphabet is not None and piece and all(c in self._alphabet for c in piece):
            return bytes(self._alphabet[c] for c in piece)
        fallback = _BYTE_FALLBACK.fullmatch(piece or "")
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        if piece and piece.startswith("\u2581"):  # SentencePiece's word start: decoding it alone drops the space
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id]).encode("utf-8")
