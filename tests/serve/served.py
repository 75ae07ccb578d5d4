"""A served tiny model: the app in a uvicorn thread on a free loopback port, called as clients call it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import openai
import torch
import uvicorn

from aapp.models.loading import load_model
from aapp.pruning.engine import prune_model
from aapp.pruning.request import MethodChoice, resolve_method
from aapp.serve.app import ServeSettings, make_app
from aapp.serve.server import listen, serving_choice, uvicorn_config

MODEL_ID = "tiny"


@dataclass
class Served:
    url: str
    state: object           # the app's state: worker, metrics, in-flight count
    loaded: object
    logs: list = field(default_factory=list)

    def client(self, api_key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)


@contextmanager
def serving(model_dir, method: str = "dense", ratio: float | None = None, calib=None, opts: dict | None = None,
            **settings):
    """Serve `model_dir` on 127.0.0.1 (a free port) in this process until the block ends, with the method
    built as `aapp serve` builds it (the dense prefill unless `opts` names a schedule)."""
    choice = serving_choice(MethodChoice(method, opts or {}, ratio, str(calib) if calib else None))
    resolved = resolve_method(choice, str(model_dir))
    loaded = load_model(str(model_dir))
    handle = prune_model(loaded, resolved.method, resolved.options, resolved.calib)
    logs: list = []
    app = make_app(handle, ServeSettings(model_id=MODEL_ID, **settings), log=logs.append)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start within 10 s"
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.aapp, loaded, logs)
    finally:
        server.should_exit = True
        thread.join(60)
        handle.remove()
        sock.close()
    assert not thread.is_alive(), "the server did not stop within 60 s"


class Gate:
    """Holds the model thread inside a forward call until released: requests then pile up in the
    queue on cue, with no timing assumption. Counts forward calls since `arm`."""

    def __init__(self, model: torch.nn.Module, after: int = 1):
        self.entered, self.release = threading.Event(), threading.Event()
        self.after, self.calls, self.armed = after, 0, False
        self._hook = model.register_forward_pre_hook(self._pre)

    def arm(self, after: int = 1) -> None:
        self.after, self.calls, self.armed = after, 0, True
        self.entered.clear()
        self.release.clear()

    def _pre(self, module, args):
        if not self.armed:
            return
        self.calls += 1
        if self.calls == self.after:
            self.entered.set()
            assert self.release.wait(60), "the test never released the model"
            self.armed = False

    def remove(self) -> None:
        self.release.set()
        self._hook.remove()


def whole_characters(completion: str) -> str:
    """What the server answers where `aapp prune` wrote `completion`: a last character whose bytes were
    never all generated (U+FFFD) is dropped, not sent broken."""
    return completion.rstrip("\ufffd").strip()


def wait_for(predicate, what: str, tries: int = 200, every_s: float = 0.05) -> None:
    for _ in range(tries):
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")
