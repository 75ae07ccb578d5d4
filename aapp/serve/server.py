"""`aapp serve`'s one library call: load, prune, listen, serve until SIGTERM, drain, return."""

from __future__ import annotations

import ipaddress
import signal
import socket
from dataclasses import dataclass, replace

import uvicorn

from aapp.console import warn
from aapp.errors import AappError
from aapp.methods.engine_options import PROBE_OPTIONS
from aapp.methods.registry import make_method
from aapp.models.loading import load_model
from aapp.pruning.engine import prune_model
from aapp.pruning.request import MethodChoice, resolve_method
from aapp.serve.app import ServeSettings, log_json, make_app
from aapp.serve.policy import batches, schedule


@dataclass(frozen=True)
class ServeConfig:
    model: str
    method: MethodChoice  # built and checked as `aapp prune` builds it (aapp.pruning.request)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (port 0: any free port), or AappError saying why not."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise AappError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it starts to drain and how much is left in flight."""

    def handle_exit(self, sig, frame) -> None:
        app_state = self.config.app.state.aapp
        log_json({"event": "drain", "signal": signal.Signals(sig).name, "in_flight": app_state.in_flight})
        super().handle_exit(sig, frame)


def uvicorn_config(app, **kw) -> uvicorn.Config:
    # No uvicorn log config: its access log writes to stdout, which stays empty; we log each request ourselves.
    return uvicorn.Config(app, log_config=None, access_log=False, log_level="warning", lifespan="on",
                          timeout_graceful_shutdown=None, **kw)


def serving_choice(choice: MethodChoice) -> MethodChoice:
    """serve's method: `choice` with the dense-prefill schedule where the method takes it and the user chose
    no schedule. Alone, a request then pays no probe; batched, it keeps its own selection, so requests
    share a forward (aapp.serve.policy). A `prefill` the user gives, or an option only the probe schedule
    reads (probe_samples, reprobe_every, ...), keeps the paper's probe schedule. `aapp prune` keeps its own
    default (probe)."""
    taken = make_method(choice.spec).engine_options
    if "prefill" not in taken or "prefill" in choice.options or any(k in choice.options for k in PROBE_OPTIONS):
        return choice
    return replace(choice, options={**choice.options, "prefill": "dense"})


def serve(config: ServeConfig) -> None:
    """Serve until SIGTERM or SIGINT; on SIGTERM, answer every request in flight, then return."""
    resolved = resolve_method(serving_choice(config.method), config.model)
    method, options = resolved.method, resolved.options
    if method.carries_state:
        raise AappError(f"method {method.name} carries state from batch to batch, so one request's "
                        "output would depend on the requests before it; serve a stateless configuration")
    if not _loopback(config.host) and config.api_key is None:
        warn(f"serving on {config.host}, beyond this machine, with no API key: anyone who reaches the port can use it")
    sock = listen(config.host, config.port)
    try:
        loaded = load_model(config.model)
        handle = prune_model(loaded, method, options, resolved.calib)
    except BaseException:
        sock.close()
        raise
    try:
        if not getattr(loaded.tokenizer, "chat_template", None):
            raise AappError(f"{config.model} has no chat template; /v1/chat/completions cannot render messages for it")
        settings = ServeSettings(model_id=config.model, api_key=config.api_key, max_batch=config.max_batch,
                                 max_queue=config.max_queue)
        app = make_app(handle, settings)
        server = _Server(uvicorn_config(app))
        host, port = sock.getsockname()[:2]
        log_json({"event": "start", "url": f"http://{host}:{port}/v1", "model": config.model,
                  "method": method.name, "ratio": options.ratio, "prefill": schedule(handle),
                  # the probe schedule selects per batch: its requests run one at a time (aapp.serve.policy)
                  "batching": "together" if batches(handle) else "one at a time (prefill=probe selects per batch)",
                  "auth": config.api_key is not None, "max_batch": config.max_batch, "max_queue": config.max_queue})
        # uvicorn re-raises the signal that stopped it once it has drained; with this handler in place the
        # re-raised SIGTERM is a no-op, so a drained server exits 0 rather than dying by the signal.
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        handle.remove()
        sock.close()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
