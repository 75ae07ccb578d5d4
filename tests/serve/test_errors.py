"""Every refusal the server gives, with OpenAI's error body, no traceback, and service after it."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from aapp.serve.schemas import Limits
from tests.serve.served import MODEL_ID, Gate, serving, wait_for

LIMITS = Limits(max_body_bytes=4096, max_messages=4, max_tokens=32, default_max_tokens=8)
OK = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def dense(serve_model_dir):
    with serving(serve_model_dir, limits=LIMITS) as s:
        yield s


def _with(**changes) -> dict:
    body = dict(OK, **changes)
    return {k: v for k, v in body.items() if v is not ...}


CASES = {
    "bad json": (b'{"model": "tiny", "messages": [', 400, None, "invalid_json"),
    "not an object": (b"[1, 2]", 400, None, None),
    "no model": (_with(model=...), 400, "model", None),
    "no messages": (_with(messages=...), 400, "messages", None),
    "messages not a list": (_with(messages="hi"), 400, "messages", None),
    "empty messages": (_with(messages=[]), 400, "messages", None),
    "unknown role": (_with(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role", None),
    "content not text": (_with(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    "message not an object": (_with(messages=["hi"]), 400, "messages[0]", None),
    "ends with the assistant": (_with(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
                                400, "messages", None),
    "max_tokens a string": (_with(max_tokens="5"), 400, "max_tokens", None),
    "max_tokens a bool": (_with(max_tokens=True), 400, "max_tokens", None),
    "temperature a string": (_with(temperature="hot"), 400, "temperature", None),
    "stream a string": (_with(stream="yes"), 400, "stream", None),
    "stop a number": (_with(stop=3), 400, "stop", None),
    "too many stops": (_with(stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    "n of 2": (_with(n=2), 400, "n", None),
    "temperature over 2": (_with(temperature=2.5), 400, "temperature", None),
    "top_p of 0": (_with(top_p=0), 400, "top_p", None),
    "max_tokens over the cap": (_with(max_tokens=33), 400, "max_tokens", None),
    "max_tokens of 0": (_with(max_tokens=0), 400, "max_tokens", None),
    "too many messages": (_with(messages=[{"role": "user", "content": "hi"}] * 5), 400, "messages", None),
    "body over the cap": (_with(messages=[{"role": "user", "content": "x" * 5000}]), 413, None, "body_too_large"),
    "unknown model": (_with(model="gpt-5"), 404, "model", "model_not_found"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_refusals_have_openai_error_bodies_and_the_server_keeps_serving(dense, case):
    body, status, param, code = CASES[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(dense.url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    if code:
        assert err["code"] == code
    # and the next request is served
    assert httpx.post(dense.url + "/v1/chat/completions", json=OK, timeout=60).status_code == 200


def test_past_the_context_is_400(serve_model_dir):
    with serving(serve_model_dir) as s:  # the default caps: the tiny model's 4,096-token context binds first
        context = s.loaded.geometry.context_length
        body = _with(messages=[{"role": "user", "content": "y" * (context - 100)}], max_tokens=200)
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        body["max_tokens"] = 50
        assert httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_the_official_client_raises_on_them(dense):
    with pytest.raises(openai.BadRequestError) as e:
        dense.client().chat.completions.create(model=MODEL_ID, messages=[], max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "messages"


def test_unknown_path_and_method_have_error_bodies(dense):
    r = httpx.get(dense.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(dense.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_a_failure_inside_the_model_is_a_bare_500_and_the_server_goes_on(dense):
    def boom(module, args):
        raise RuntimeError("secret internal detail")

    hook = dense.loaded.model.register_forward_pre_hook(boom)
    try:
        r = httpx.post(dense.url + "/v1/chat/completions", json=OK, timeout=60)
    finally:
        hook.remove()
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "the server failed to complete this request", "type": "server_error",
                                  "param": None, "code": None}}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internal detail" in dense.logs[-1]["error"]  # the operator still learns what happened
    assert httpx.post(dense.url + "/v1/chat/completions", json=OK, timeout=60).status_code == 200


def test_dense_reports_dense(dense):
    r = dense.client().chat.completions.create(model=MODEL_ID, messages=OK["messages"], max_tokens=2, temperature=0)
    a = r.model_extra["aapp"]
    assert a["method"] == "dense" and a["ratio"] == 0.0 and a["policy"] == "dense"
    assert a["gate"] is None and a["flops_fraction"] == 1.0


def test_auth(serve_model_dir):
    with serving(serve_model_dir, api_key="s3cret") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for method, path in (("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL_ID}"),
                                 ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/metrics")):
                r = httpx.request(method, s.url + path, json=OK, headers=headers, timeout=60)
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
        # A load balancer's probe carries no key.
        assert httpx.get(s.url + "/health").json()["status"] == "ok"
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").chat.completions.create(model=MODEL_ID, messages=OK["messages"], max_tokens=2)
        r = s.client(api_key="s3cret").chat.completions.create(model=MODEL_ID, messages=OK["messages"], max_tokens=2)
        assert r.usage.completion_tokens == 2


def test_a_full_queue_is_429_with_retry_after(serve_model_dir):
    with serving(serve_model_dir, max_queue=1, limits=LIMITS) as s:
        gate = Gate(s.loaded.model)
        results: dict = {}

        def post(name):
            results[name] = httpx.post(s.url + "/v1/chat/completions", json=OK, timeout=60)

        try:
            gate.arm(after=1)
            running = threading.Thread(target=post, args=("running",))
            running.start()
            assert gate.entered.wait(30), "the first request never reached the model"
            waiting = threading.Thread(target=post, args=("waiting",))
            waiting.start()
            wait_for(lambda: s.state.worker.waiting == 1, "the second request to queue")
            r = httpx.post(s.url + "/v1/chat/completions", json=OK, timeout=60)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
        finally:
            gate.remove()
        running.join(60)
        waiting.join(60)
        assert results["running"].status_code == 200 and results["waiting"].status_code == 200
        assert httpx.post(s.url + "/v1/chat/completions", json=OK, timeout=60).status_code == 200
