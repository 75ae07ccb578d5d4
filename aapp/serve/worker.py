"""The model's one thread: a bounded queue of requests, gathered in short windows and run in batches.

Requests that arrive within `window_s` of each other (at most `max_batch`) form one turn of the
worker. Where the method selects per row (aapp.serve.policy.batches) the turn runs as one batch
through the model; otherwise each request runs as a batch of its own (`batch_size` 1), so sharing a
turn changes no request's selection. The model runs in this thread only; the event loop never waits
on it. Admission is bounded: past `max_queue` waiting requests, `submit` refuses (the route's 429).
A batch's requests are answered when it ends: a row that finishes early has streamed its text, and
waits only for its closing chunk.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from aapp.serve.generate import Piece
from aapp.serve.schemas import Sampling


@dataclass
class Job:
    """One admitted request. `on_text` and `finish` are called from the worker thread."""

    input_ids: torch.Tensor
    sampling: Sampling
    on_text: Callable[[Piece], None] | None  # a stream's new text and its tokens' logprobs
    finish: Callable[[object, dict | None, BaseException | None], None]  # (outcome, aapp object, error)
    cancelled: threading.Event = field(default_factory=threading.Event)
    admitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch: int | None = None  # how many requests its forward batch ran (its log line says so)


class Worker:
    def __init__(self, run: Callable, max_batch: int, max_queue: int, window_s: float = 0.005,
                 on_depth: Callable[[int], None] = lambda n: None, batch_size: int = 1):
        """`run(jobs) -> [(outcome, aapp object)]` generates `jobs` (at most `batch_size`) as one batch
        (see aapp.serve.policy)."""
        self._run, self.max_batch, self.max_queue, self.window_s = run, max_batch, max_queue, window_s
        self.batch_size = max(1, min(batch_size, max_batch))
        self._on_depth = on_depth
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self.turns: list[int] = []  # how many requests each turn gathered (the load test reads it)
        self.batches: list[int] = []  # how many requests each forward batch ran (the tests read it)
        self._thread = threading.Thread(target=self._loop, name="aapp-serve-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue `job`; False when `max_queue` requests are already waiting."""
        with self._lock:
            if self._waiting >= self.max_queue:
                return False
            self._waiting += 1
            self._on_depth(self._waiting)
        self._queue.put(job)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop after the requests already queued (the server drains them before calling this)."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    @property
    def waiting(self) -> int:
        return self._waiting

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            turn = [first]
            deadline = time.monotonic() + self.window_s
            stop = False
            while len(turn) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                turn.append(job)
            self.turns.append(len(turn))
            for start in range(0, len(turn), self.batch_size):
                self._batch(turn[start : start + self.batch_size])
            if stop:
                return

    def _batch(self, jobs: list[Job]) -> None:
        with self._lock:
            self._waiting -= len(jobs)
            self._on_depth(self._waiting)
        live = []
        for job in jobs:
            if job.cancelled.is_set():  # its client left while it waited
                job.finish(None, None, None)
            else:
                job.started = time.monotonic()
                live.append(job)
        if not live:
            return
        self.batches.append(len(live))
        for job in live:
            job.batch = len(live)
        try:
            results = self._run(live)
        except Exception as e:  # a failed batch must not stop the server; its requests' routes answer 500
            for job in live:
                job.finish(None, None, e)
            return
        for job, (outcome, info) in zip(live, results):
            job.finish(outcome, info, None)
