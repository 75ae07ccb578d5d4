"""The layering in pyproject.toml ([tool.importlinter]) holds: no import against the layers, no cycle."""

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache", "--config", "pyproject.toml"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout or "broken" not in result.stdout.split("Contracts:")[-1]


def _message_texts(call: ast.Call) -> list[str]:
    """The literal text of a call's first argument (an f-string's literal parts), commands left out."""
    if not call.args:
        return []
    arg = call.args[0]
    parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
    text = "{}".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
    return [re.sub(r"`[^`]*`", "", text)]  # a whole command to run (`aapp models pull --force X`) may name flags


def _messages(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            yield node.lineno, _message_texts(node.exc)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("warn", "info"):
            yield node.lineno, _message_texts(node)


def test_library_messages_name_fields_not_flags():
    # The library knows fields; only the CLI knows its flags (and adds them to what it prints).
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    found = []
    for path in sorted((REPO / "aapp").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for line, texts in _messages(ast.parse(path.read_text(), str(path))):
            found += [f"{path.relative_to(REPO)}:{line}: {m.group()}" for t in texts for m in flag.finditer(t)]
    assert not found, "\n".join(found)
