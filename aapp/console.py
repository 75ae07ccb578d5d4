"""The stderr console: progress bars, tables and warnings. Stdout stays for data."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Logs and CI capture stderr without a terminal; rich would squeeze tables into 80 columns. 100 is
# what a log viewer or a review shows whole (tables wider than that split into parts).
NOT_A_TERMINAL_WIDTH = 100
console = Console(stderr=True)
if not console.is_terminal:
    console = Console(stderr=True, width=NOT_A_TERMINAL_WIDTH)


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console,
    )


def warn(message: str) -> None:
    """One line, however long (a log reader greps for it)."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(message, highlight=False)
