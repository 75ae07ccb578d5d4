"""The HTTP face of `aapp serve`: routes, auth, caps, errors, one JSON log line per request.

Every answer other than 200 has OpenAI's error body; no exception text from inside the model
reaches a client (a failed request is a 500 that says only that), and the server keeps serving.
`/health` answers without the API key (load balancers probe it, and it tells nothing a request
could not); everything else, `/metrics` included, needs it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from aapp.errors import InputError
from aapp.pruning.engine import PrunedModel
from aapp.serve import schemas
from aapp.serve.chat import render
from aapp.serve.metrics import Metrics
from aapp.serve.generate import DecodeRequest, Piece
from aapp.serve.policy import Served, batches, run_batch
from aapp.serve.schemas import ApiError, ChatRequest, Limits, TextRequest
from aapp.serve.tokens import TokenBytes
from aapp.serve.wire import Answer, ChatAnswer, TextAnswer
from aapp.serve.worker import Job, Worker


@dataclass(frozen=True)
class ServeSettings:
    model_id: str                    # the name clients pass as `model` and /v1/models lists
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8
    max_queue: int = 64
    window_s: float = 0.005


_log_lock = threading.Lock()


def log_json(record: dict) -> None:
    """One line on stderr; stdout stays empty."""
    line = json.dumps({"ts": round(time.time(), 3), **record}, default=str)
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _State:
    def __init__(self, handle: PrunedModel, settings: ServeSettings, log: Callable[[dict], None]):
        self.handle, self.settings, self.log = handle, settings, log
        self.metrics = Metrics()
        self.tokens = TokenBytes(handle.loaded.tokenizer)
        self.worker = Worker(self._run, settings.max_batch, settings.max_queue, settings.window_s,
                             on_depth=self.metrics.queue_depth.set,
                             batch_size=settings.max_batch if batches(handle) else 1)
        self.created = int(time.time())
        self.in_flight = 0
        self.service_s = 1.0  # a running mean of one request's model time, for Retry-After
        self.lock = threading.Lock()

    def _run(self, jobs: list[Job]) -> list[tuple]:
        requests = [DecodeRequest(j.input_ids, j.sampling, j.on_text, j.cancelled.is_set) for j in jobs]
        return run_batch(self.handle, requests)


def make_app(handle: PrunedModel, settings: ServeSettings, log: Callable[[dict], None] = log_json) -> FastAPI:
    state = _State(handle, settings, log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.worker.start()
        yield
        # uvicorn calls this after every open connection has been answered: nothing is left to drain.
        await run_in_threadpool(state.worker.close)
        log({"event": "stop"})

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.aapp = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        state.metrics.reject(e.status)
        log({"event": "request", "path": request.url.path, "status": e.status, "error": e.message})
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        log({"event": "request", "path": request.url.path, "status": e.status_code, "error": str(e.detail)})
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(schemas.error_body(f"{request.method} {request.url.path}: {e.detail}", kind),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        log({"event": "request", "path": request.url.path, "status": 500, "error": f"{type(e).__name__}: {e}"})
        return _server_error()

    def authorize(request: Request) -> None:
        key = settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # compare_digest takes as long for a near miss as for a far one: the key cannot be guessed by timing.
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, "method": handle.method.name,
                "ratio": handle.options.ratio, "waiting": state.worker.waiting, "in_flight": state.in_flight}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        authorize(request)
        if model_id != settings.model_id:
            raise ApiError(404, f"model {model_id!r} is not served here; this server serves {settings.model_id!r}",
                           type="not_found_error", param="model", code="model_not_found")
        return model_card()

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": state.created, "owned_by": "aapp"}

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req = schemas.parse_request(await _read_body(request, settings.limits.max_body_bytes), settings.limits)
        served(req)
        input_ids = await run_in_threadpool(_tokenize, handle, req)
        return await _answer(state, request, req, input_ids, ChatAnswer.new(req.model, state.tokens))

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await _read_body(request, settings.limits.max_body_bytes)
        req = schemas.parse_text_request(body, settings.limits)
        served(req)
        input_ids = await run_in_threadpool(_tokenize_text, handle, req)
        return await _answer(state, request, req, input_ids, TextAnswer.new(req.model, state.tokens))

    def served(req: ChatRequest | TextRequest) -> None:
        if req.model != settings.model_id:
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves {settings.model_id!r}",
                           param="model", code="model_not_found")
        schemas.check_token_ids(req.sampling, handle.loaded.geometry.vocab_size)

    return app


async def _read_body(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ApiError(400, "the Content-Length header is not a number")
    if length is not None and int(length) > cap:
        raise ApiError(413, f"the body is over the {cap}-byte limit", code="body_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > cap:
            raise ApiError(413, f"the body is over the {cap}-byte limit", code="body_too_large")
        chunks.append(part)
    return b"".join(chunks)


def _tokenize(handle: PrunedModel, req: ChatRequest):
    loaded = handle.loaded
    try:
        text = render(loaded.tokenizer, req.messages)
    except InputError as e:
        raise ApiError(400, str(e), param=getattr(e, "param", "messages")) from None
    # The template holds BOS where the family wants one, so no special tokens are added.
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return _fits(handle, ids, req.sampling.max_tokens, "messages")


def _tokenize_text(handle: PrunedModel, req: TextRequest):
    # A plain prompt is continued as it is; the tokenizer adds BOS where the family wants one.
    ids = handle.loaded.tokenizer(req.prompt, return_tensors="pt").input_ids
    return _fits(handle, ids, req.sampling.max_tokens, "prompt")


def _fits(handle: PrunedModel, ids, max_tokens: int, param: str):
    """`ids` on the model's device, or a 400 where they and max_tokens exceed the context."""
    context = handle.loaded.geometry.context_length
    if ids.shape[1] + max_tokens > context:
        raise ApiError(400, f"the {param} ({ids.shape[1]} tokens) plus max_tokens ({max_tokens}) "
                       f"exceed the model's context of {context} tokens", param=param,
                       code="context_length_exceeded")
    return ids.to(handle.loaded.device)


async def _answer(state: _State, request: Request, req: ChatRequest | TextRequest, input_ids, answer: Answer):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def finish(outcome, info, error) -> None:  # worker thread
        _record(state, request.url.path, answer.id, req, job, outcome, info, error)
        aapp = info.to_json() if info is not None else None
        loop.call_soon_threadsafe(events.put_nowait, ("done", (outcome, aapp, error)))

    def send(piece: Piece) -> None:  # worker thread
        loop.call_soon_threadsafe(events.put_nowait, ("text", piece))

    job = Job(input_ids, req.sampling, send if req.stream else None, finish)
    with state.lock:
        state.in_flight += 1
    state.metrics.in_flight.set(state.in_flight)
    if not state.worker.submit(job):
        _left(state)
        # service_s is one batch's model time; the queue ahead drains a batch at a time.
        retry = max(1, math.ceil(state.service_s * max(1, state.worker.waiting / state.worker.batch_size)))
        raise ApiError(429, f"the queue is full ({state.settings.max_queue} requests waiting); retry later",
                       type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry)})
    if req.stream:
        return StreamingResponse(_stream(req, answer, events, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    while True:
        try:
            kind, payload = await asyncio.wait_for(events.get(), timeout=0.25)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()  # a client that left frees its place: the worker stops at the next token
            continue
        if kind == "done":
            break
    outcome, info, error = payload
    if error is not None or outcome is None:
        return _server_error() if error is not None else Response(status_code=499)
    return answer.whole(outcome, info)


async def _stream(req: ChatRequest | TextRequest, answer: Answer, events: asyncio.Queue,
                  job: Job) -> AsyncIterator[str]:
    done = False
    logprobs = req.sampling.logprobs is not None
    try:
        opening = answer.opening()
        if opening is not None:
            yield _sse(opening)
        while True:
            kind, payload = await events.get()
            if kind == "done":
                done = True
                break
            yield _sse(answer.piece(payload, logprobs))
        outcome, info, error = payload
        if error is not None or outcome is None:
            yield _sse(schemas.error_body("the server failed to complete this request", "server_error"))
        else:
            yield _sse(answer.closing(outcome.finish_reason, info))
            if req.include_usage:
                yield _sse(answer.usage_chunk(outcome))
        yield "data: [DONE]\n\n"
    finally:
        if not done:  # the client went away mid-stream (the response task was cancelled)
            job.cancelled.set()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _server_error() -> JSONResponse:
    return JSONResponse(schemas.error_body("the server failed to complete this request", "server_error"),
                        status_code=500)


def _left(state: _State) -> None:
    with state.lock:
        state.in_flight -= 1
    state.metrics.in_flight.set(state.in_flight)


def _record(state: _State, path: str, rid: str, req: ChatRequest | TextRequest, job: Job, outcome,
            info: Served | None, error: BaseException | None) -> None:
    """Metrics and the request's log line, once per admitted request, from the worker thread."""
    _left(state)
    now = time.monotonic()
    latency = now - job.admitted
    if error is not None:
        status = 500
    elif outcome is None or outcome.finish_reason == "cancelled":
        status = 499  # nginx's "client closed request": the client left before its answer was complete
    else:
        status = 200
    prompt = int(job.input_ids.shape[1])
    completion = outcome.completion_tokens if outcome is not None else 0
    state.metrics.observe(str(status), latency, prompt, completion, info)
    if job.started is not None and status == 200:
        state.service_s = 0.8 * state.service_s + 0.2 * (now - job.started)
    facts = info.report.facts if info is not None else None
    record = {"event": "request", "id": rid, "path": path, "status": status,
              "stream": req.stream, "latency_s": round(latency, 4),
              "queue_s": round((job.started or now) - job.admitted, 4), "batch": job.batch,
              "prompt_tokens": prompt,
              "completion_tokens": completion, "finish_reason": outcome.finish_reason if outcome else None,
              "policy": info.policy if info else None, "gate_fired": facts.fired if facts else None,
              "gate_score": facts.batch_score if facts else None, "flops_fraction": info.flops_fraction if info else None}
    if req.user is not None:
        record["user"] = req.user  # OpenAI's `user`: who the caller answers for, kept where the operator reads
    if error is not None:
        record["error"] = f"{type(error).__name__}: {error}"  # the server's log, never the client's answer
    state.log(record)
