"""A request's answer does not depend on who shared its turn of the model, and a client that leaves
frees its place."""

from __future__ import annotations

import threading

import httpx
import pytest

from aapp.calibration.store import load_calibration
from aapp.methods import make_method
from aapp.models.loading import load_model
from aapp.prompts import load_prompts
from aapp.pruning.engine import PruneOptions
from aapp.pruning.run import GenerationSettings, generate_rows
from tests.serve.served import MODEL_ID, Gate, serving, wait_for

N = 8


@pytest.fixture(scope="module")
def aapp_server(serve_model_dir, tiny_calib):
    with serving(serve_model_dir, "aapp", 0.3, tiny_calib, {"prefill": "probe"}, max_batch=N) as s:
        yield s


@pytest.fixture(scope="module")
def prompts():
    return [p.text for p in load_prompts("calib-harmful", limit=6) + load_prompts("calib-harmless", limit=6)]


def _ask(served, text: str, **kw) -> dict:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0,
            **kw}
    r = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _facts(answer: dict) -> tuple:
    a = answer["aapp"]
    return answer["choices"][0]["message"]["content"], a["gate"]["fired"], a["gate"]["score"], a["kept"], \
        a["flops_fraction"]


def test_same_tokens_alone_or_beside_requests_the_gate_decides_otherwise(aapp_server, prompts, serve_model_dir,
                                                                        tiny_calib):
    alone = {t: _facts(_ask(aapp_server, t)) for t in prompts}
    fired = [t for t in prompts if alone[t][1]]
    calm = [t for t in prompts if not alone[t][1]]
    assert fired and calm, "the test needs neighbours the gate decides both ways"
    mates = (calm[:4] + fired[:3] + calm[4:] + fired[3:])[: N - 1]  # and, 8th, mates[0] sampled with a seed
    seeded = {"temperature": 0.9, "top_p": 0.95, "seed": 7}
    mates_alone_sampled = _ask(aapp_server, mates[0], **seeded)["choices"][0]["message"]["content"]

    # Hold the model on a blocker, queue all mates, then let them run as one turn.
    gate = Gate(aapp_server.loaded.model)
    answers: dict = {}

    def ask(i, text, kw):
        answers[i] = _ask(aapp_server, text, **kw)

    try:
        gate.arm(after=1)
        blocker = threading.Thread(target=ask, args=("blocker", "hold", {}))
        blocker.start()
        assert gate.entered.wait(30)
        threads = [threading.Thread(target=ask, args=(i, t, {})) for i, t in enumerate(mates)]
        threads.append(threading.Thread(target=ask, args=("seeded", mates[0], seeded)))
        for th in threads:
            th.start()
        wait_for(lambda: aapp_server.state.worker.waiting == N, f"{N} requests to queue")
    finally:
        gate.remove()
    for th in [blocker, *threads]:
        th.join(120)
    assert aapp_server.state.worker.turns[-1] == N, "the mates did not share one turn"
    # prefill=probe selects per batch: each request of the turn ran as a batch of its own.
    assert aapp_server.state.worker.batches[-N:] == [1] * N
    for i, t in enumerate(mates):
        assert _facts(answers[i]) == alone[t], t
    assert answers["seeded"]["choices"][0]["message"]["content"] == mates_alone_sampled

    # The contrast: the same prompts as one batch of `aapp prune` share one gate decision, so a calm
    # prompt beside a fired one is decided otherwise than alone.
    loaded = load_model(str(serve_model_dir))
    batch = list(generate_rows(loaded, load_prompts_from(mates), make_method("aapp"), PruneOptions(ratio=0.3),
                               load_calibration(tiny_calib), GenerationSettings(max_new_tokens=8, batch_size=N)))
    assert any(row["gate"]["fired"] != alone[t][1] for row, t in zip(batch, mates))


def load_prompts_from(texts):
    from aapp.prompts import Prompt

    return [Prompt(f"p{i}", t, None, "test") for i, t in enumerate(texts)]


def test_a_client_that_leaves_mid_stream_frees_its_place(aapp_server):
    jobs = []
    submit = aapp_server.state.worker.submit
    aapp_server.state.worker.submit = lambda job: (jobs.append(job), submit(job))[1]
    gate = Gate(aapp_server.loaded.model)
    n_logs = len(aapp_server.logs)
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 500,
            "temperature": 0, "stream": True}
    try:
        gate.arm(after=3)  # the prefill and one decode step run, the next one waits
        with httpx.stream("POST", aapp_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()  # held: a dropped line iterator would close the response, leaving early
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            assert gate.entered.wait(30), "the request never reached its third forward"  # it is running
        # the client has gone; the server notices while the model still waits
        wait_for(lambda: jobs and jobs[0].cancelled.is_set(), "the server to notice the client left")
    finally:
        gate.remove()
        aapp_server.state.worker.submit = submit
    wait_for(lambda: len(aapp_server.logs) > n_logs, "the request's log record")
    rec = aapp_server.logs[n_logs]
    assert rec["status"] == 499 and rec["finish_reason"] == "cancelled"
    assert rec["completion_tokens"] <= 3  # it stopped at the next token, not after 500
    assert _ask(aapp_server, "and now?")["choices"][0]["finish_reason"] == "length"
    assert aapp_server.state.in_flight == 0 and aapp_server.state.worker.waiting == 0
