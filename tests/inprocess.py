"""The CLI run in-process, as the console script runs it (`aapp.cli.main`): argv, stdin bytes, exit code.

Cheaper than a subprocess (no second torch import), for tests that run many commands.
"""

from __future__ import annotations

import io
import sys

from aapp.cli import main


def run(args: list[str], capsys, stdin: bytes | None = None) -> tuple[int, str, str]:
    old_argv, old_stdin = sys.argv, sys.stdin
    sys.argv = ["aapp", *map(str, args)]
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.stdin = old_argv, old_stdin
    out, err = capsys.readouterr()
    return code, out, err
