"""The stderr console: progress bars, tables and warnings. Stdout stays for data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Logs and CI capture stderr without a terminal; rich would squeeze tables into 80 columns. 100 is
# what a log viewer or a review shows whole (tables wider than that split into parts).
NOT_A_TERMINAL_WIDTH = 100
console = Console(stderr=True)
if not console.is_terminal:
    console = Console(stderr=True, width=NOT_A_TERMINAL_WIDTH)

LINE_EVERY_S = 30.0  # a plain progress line at most this often per task, as pip and transformers log


def progress(out: Console | None = None) -> Progress | LineProgress:
    """Progress on stderr: rich bars on a terminal; in a log or a pipe, plain lines (LineProgress).

    A task's time counts from when it starts: add a phase's task as the phase begins, or add it
    with `start=False` and `start_task` it then."""
    out = out or console
    if not out.is_terminal:
        return LineProgress(out)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=out,
    )


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float | None = None  # the clock when the task started
    said: float = 0.0             # the clock at its last line
    finished: bool = False


class LineProgress:
    """The subset of rich's Progress that aapp calls (add_task, start_task, advance, update), as
    plain lines for a stderr that is not a terminal: one when a task starts, one with its counts
    at most every `every` seconds while it advances, and one when it completes. Lines never
    redraw, so a log shows where a run is (a bar drawn once, at 0, reads like a stuck job)."""

    def __init__(self, out: Console | None = None, every: float = LINE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self._out, self._every, self._clock = out or console, every, clock
        self._tasks: list[_Task] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, start: bool = True, completed: float = 0,
                 **fields) -> int:
        self._tasks.append(_Task(description, total, float(completed)))
        task = len(self._tasks) - 1
        if start:
            self.start_task(task)
        return task

    def start_task(self, task: int) -> None:
        t = self._tasks[task]
        if t.started is None:
            t.started = t.said = self._clock()
            self._say(t, "started" + (f", {self._counts(t)}" if t.total is not None else ""))

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields) -> None:
        t = self._tasks[task]
        if description is not None:
            t.description = description
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = float(completed)
        if advance is not None:
            t.completed += advance
        if t.started is None or t.finished:
            return
        now = self._clock()
        if t.total is not None and t.completed >= t.total:
            t.finished = True
            self._say(t, f"done, {self._counts(t)} in {_duration(now - t.started)}")
        elif now - t.said >= self._every:
            t.said = now
            self._say(t, f"{self._counts(t)}, {_duration(now - t.started)}")

    @staticmethod
    def _counts(t: _Task) -> str:
        done = f"{t.completed:g}"
        return done if t.total is None else f"{done}/{t.total:g}"

    def _say(self, t: _Task, what: str) -> None:
        self._out.print(f"{t.description}: {what}", highlight=False, markup=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    """0:42, 12:05, 1:02:03: rich's elapsed column, in a line."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def warn(message: str) -> None:
    """One line, however long (a log reader greps for it)."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    console.print(message, highlight=False)
