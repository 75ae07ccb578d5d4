"""The OpenAI chat API as the official client sees it: completions, streams, models, health, metrics,
and the `aapp` object that says what pruning did to each answer."""

from __future__ import annotations

import json

import httpx
import pytest

from aapp.methods import make_method
from aapp.models.loading import load_model
from aapp.calibration.store import load_calibration
from aapp.prompts import Prompt
from aapp.pruning.engine import PruneOptions
from aapp.pruning.run import GenerationSettings, generate_rows

from tests.serve.served import MODEL_ID, serving, whole_characters

USER = [{"role": "user", "content": "tell me a story about a cat"}]


@pytest.fixture(scope="module")
def aapp_server(serve_model_dir, tiny_calib):
    with serving(serve_model_dir, "aapp", 0.3, tiny_calib, {"prefill": "probe"}) as s:
        yield s


def test_chat_completion_matches_prune_batch_of_one(aapp_server, serve_model_dir, tiny_calib):
    r = aapp_server.client().chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL_ID
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == 12 and choice.finish_reason == "length"  # the random model never says EOS here
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    # `aapp prune` on the same prompt, alone in its batch, on another copy of the model: the same tokens.
    loaded = load_model(str(serve_model_dir))
    [row] = generate_rows(loaded, [Prompt("p", USER[0]["content"], None, "test")], make_method("aapp"),
                          PruneOptions(ratio=0.3), load_calibration(tiny_calib),
                          GenerationSettings(max_new_tokens=12, batch_size=1))
    assert choice.message.content.strip() == whole_characters(row["completion"])
    extra = r.model_extra["aapp"]
    assert extra["flops_fraction"] == pytest.approx(row["flops"]["fraction"])
    assert extra["gate"]["fired"] == row["gate"]["fired"]
    assert extra["kept"] == row["kept"]


def test_aapp_object_says_what_ran(aapp_server):
    r = aapp_server.client().chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=4, temperature=0)
    a = r.model_extra["aapp"]
    assert a["method"] == "aapp" and a["ratio"] == 0.3
    assert a["policy"] == ("protect" if a["gate"]["fired"] else "pruned")
    assert isinstance(a["gate"]["score"], float) and a["gate"]["kind"] == "direction"
    # Which fit the threshold came from, named as such: `threshold` would promise a number.
    assert "threshold" not in a["gate"]
    assert a["gate"]["threshold_source"] in ("dense", "route") or a["gate"]["threshold_source"].startswith("pruned@")
    assert isinstance(a["gate"]["layer"], int)
    # Pruned layers plus the probe; on this 8-layer toy, a batch of one's probe (half its prompt) outweighs
    # the saving. The value itself is checked against `aapp prune`'s above.
    assert isinstance(a["flops_fraction"], float) and a["flops_fraction"] > 0
    g = aapp_server.loaded.geometry
    assert set(a["kept"]) == {"heads", "kv_heads", "channels"}
    assert all(len(v) == g.num_layers for v in a["kept"].values())
    assert a["kept"]["channels"][0] == g.intermediate_size  # a dense layer
    assert a["kept"]["channels"][-1] < g.intermediate_size  # a pruned one


def test_stream_gives_the_same_text_as_a_completion(aapp_server):
    client = aapp_server.client()
    whole = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == "length"
    assert last.model_extra["aapp"]["policy"] == whole.model_extra["aapp"]["policy"]
    assert chunks[-1].usage.completion_tokens == 16 and not chunks[-1].choices


def test_stream_is_server_sent_events_ending_done(aapp_server):
    body = {"model": MODEL_ID, "messages": USER, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", aapp_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] == "length"


def test_stop_strings_cut_the_text(aapp_server):
    client = aapp_server.client()
    full = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    stop = text[5:7]  # two characters from inside the answer
    cut = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]
    streamed = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=24, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.find(stop)]


def test_seeded_sampling_repeats_and_seeds_differ(aapp_server):
    client = aapp_server.client()

    def ask(seed):
        return client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=16, temperature=1.0,
                                              top_p=0.9, seed=seed).choices[0].message.content

    greedy = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=16,
                                            temperature=0).choices[0].message.content
    a, b, c = ask(1), ask(1), ask(2)
    assert a == b
    assert len({a, c, greedy}) == 3


def test_models_health_and_metrics(aapp_server):
    assert [m.id for m in aapp_server.client().models.list()] == [MODEL_ID]
    health = httpx.get(aapp_server.url + "/health").json()
    assert health["status"] == "ok" and health["method"] == "aapp" and health["ratio"] == 0.3
    before = _metric(aapp_server, 'aapp_completion_tokens_total')
    aapp_server.client().chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=5, temperature=0)
    r = httpx.get(aapp_server.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert _metric(aapp_server, 'aapp_completion_tokens_total') == before + 5
    for name in ("aapp_requests_total{status=\"200\"}", "aapp_prompt_tokens_total", "aapp_gate_fires_total",
                 "aapp_gate_escalations_total", "aapp_queue_depth", "aapp_request_latency_seconds_bucket"):
        assert name in r.text, name
    fired = sum(1 for rec in aapp_server.logs if rec.get("gate_fired"))
    assert _metric(aapp_server, "aapp_gate_fires_total") == fired


def test_one_json_log_record_per_request(aapp_server):
    n = len(aapp_server.logs)
    aapp_server.client().chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=3, temperature=0)
    [rec] = aapp_server.logs[n:]
    assert rec["event"] == "request" and rec["status"] == 200 and rec["completion_tokens"] == 3
    assert {"latency_s", "prompt_tokens", "policy", "gate_fired", "gate_score", "flops_fraction"} <= set(rec)


def _metric(served, name: str) -> float:
    for line in httpx.get(served.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
