"""Under the dense prefill (serve's default) a turn's requests run as one batch through the model, and each
request gets what it gets alone: its tokens, its gate decision and its kept counts, whatever its neighbours'
lengths and settings. Alone, a request pays no probe."""

from __future__ import annotations

import threading

import pytest

from aapp.prompts import load_prompts
from tests.serve.served import MODEL_ID, Gate, serving, wait_for

N = 8
LONG = "Tell me, in great detail and at length, how the river ran past the old mill. " * 6
# Each neighbour's own settings (greedy throughout, so a row's tokens are a function of its logits).
SETTINGS = [{}, {"max_tokens": 3}, {"stop": ["e"]}, {"logprobs": True, "top_logprobs": 3},
            {"presence_penalty": 1.5, "frequency_penalty": 0.5}, {"logit_bias": {"42": 5}}, {"max_tokens": 12},
            {"stream": True}]


@pytest.fixture(scope="module")
def prompts():
    texts = [p.text for p in load_prompts("calib-harmful", limit=3) + load_prompts("calib-harmless", limit=3)]
    return [texts[0], "hi", LONG, *texts[1:]][:N]


def _ask(served, text: str, kw: dict) -> tuple:
    kw = {"max_tokens": 8, **kw}
    client = served.client()
    messages = [{"role": "user", "content": text}]
    if kw.pop("stream", False):
        chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0,
                                                     stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        aapp = next(c.model_extra["aapp"] for c in chunks if c.model_extra.get("aapp"))
        logprobs = None
    else:
        r = client.chat.completions.create(model=MODEL_ID, messages=messages, temperature=0, **kw)
        text, aapp = r.choices[0].message.content, r.model_extra["aapp"]
        logprobs = r.choices[0].logprobs and [t.token for t in r.choices[0].logprobs.content]
    gate = aapp["gate"]
    return text, logprobs, aapp["policy"], gate and gate["fired"], aapp["kept"], aapp["prefill"]


def _together(served, prompts) -> dict:
    """Each prompt with its settings, queued behind a held request so that all of them form one turn."""
    gate = Gate(served.loaded.model)
    answers: dict = {}

    def ask(key, text, kw):
        answers[key] = _ask(served, text, kw)

    try:
        gate.arm(after=1)
        blocker = threading.Thread(target=ask, args=("blocker", "hold", {"max_tokens": 2}))
        blocker.start()
        assert gate.entered.wait(30)
        threads = [threading.Thread(target=ask, args=(i, t, SETTINGS[i])) for i, t in enumerate(prompts)]
        for th in threads:
            th.start()
        wait_for(lambda: served.state.worker.waiting == len(prompts), f"{len(prompts)} requests to queue")
    finally:
        gate.remove()
    for th in [blocker, *threads]:
        th.join(120)
    return answers


@pytest.mark.parametrize("spec, ratio", [("dense", None), ("pp", 0.3), ("aapp:dense", 0.3)])
def test_a_request_answers_alike_alone_and_batched_with_neighbours(serve_model_dir, tiny_calib, prompts, spec, ratio):
    calib = None if spec == "dense" else tiny_calib
    with serving(serve_model_dir, spec, ratio, calib, max_batch=N) as served:
        alone = {i: _ask(served, t, SETTINGS[i]) for i, t in enumerate(prompts)}
        together = _together(served, prompts)
        assert served.state.worker.batches[-1] == N, "the turn did not run as one batch"
    for i in range(N):
        assert together[i] == alone[i], (spec, i, SETTINGS[i])
    assert alone[0][5] == (None if spec == "dense" else "dense")
    if spec == "aapp:dense":  # the neighbours include requests the gate decides otherwise
        assert len({a[2] for a in alone.values()}) == 2, "the test needs neighbours routed both ways"


def test_a_request_alone_pays_no_probe_under_the_default_schedule(serve_model_dir, tiny_calib):
    with serving(serve_model_dir, "pp", 0.3, tiny_calib) as served:
        r = served.client().chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=64, temperature=0)
    a = r.model_extra["aapp"]
    assert a["prefill"] == "dense" and r.usage.completion_tokens == 64
    assert a["flops"]["probe"] == 0 and a["flops"]["recompute"] == 0
    assert a["flops_fraction"] < 1 and a["flops"]["decode"]["fraction"] < 1
    assert a["flops"]["prefill"]["fraction"] == 1  # the prefill ran unpruned


@pytest.mark.parametrize("spec, opts, prefill", [
    ("pp", {}, "dense"), ("aapp:dense", {"protect": "0.2"}, "dense"), ("pp", {"prefill": "probe"}, "probe"),
    ("pp", {"probe_samples": "0.5"}, None),  # an option only the probe reads keeps the probe schedule
    ("dense", {}, None)])
def test_serve_defaults_to_the_dense_prefill_unless_told(spec, opts, prefill):
    from aapp.pruning.request import MethodChoice
    from aapp.serve.server import serving_choice

    chosen = serving_choice(MethodChoice(spec, opts, None, None)).options
    want = opts | {"prefill": "dense"} if prefill == "dense" else opts
    assert chosen.get("prefill") == prefill and dict(chosen) == want
