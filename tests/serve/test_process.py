"""`aapp serve` as a process: one-line errors for options that do not apply, JSON lines on stderr,
nothing on stdout, and SIGTERM answering every request in flight before exiting 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from tests.serve.served import wait_for
from tests.test_cli import aapp, one_line_error

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, needle", [
    (["--method", "dense", "--ratio", "0.3"], "dense prunes nothing, so it takes no ratio"),
    (["--method", "pp", "--opt", "protect=0.2", "--calib", "x"], "pp has no option 'protect'"),
    (["--method", "dense", "--calib", "x.safetensors"], "calib does not apply"),
    (["--method", "pp"], "needs a calibration file"),
    (["--method", "aapp", "--ratio", "1.5", "--calib", "x"], "ratio must be in [0, 1)"),
    (["--method", "nope"], "unknown method"),
])
def test_options_that_do_not_apply_are_one_line_errors(args, needle):
    one_line_error(aapp("serve", *args), needle)


def test_a_busy_port_is_a_one_line_error(serve_model_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        one_line_error(aapp("serve", "--model", serve_model_dir, "--method", "dense", "--port", port),
                       f"cannot listen on 127.0.0.1:{port}")


def test_sigterm_drains_requests_in_flight_then_exits_0(serve_model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "aapp.cli", "serve", "--model", str(serve_model_dir), "--method",
                             "dense", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any('"start"' in ln for ln in lines) or proc.poll() is not None, "the server to start",
                 tries=1200)
        start = json.loads(next(ln for ln in lines if '"start"' in ln))
        url = start["url"]
        assert url.startswith("http://127.0.0.1:")
        assert start["prefill"] is None and start["batching"] == "together"  # dense: nothing selected, rows batch
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        answers: dict = {}

        def ask(i):
            stream = client.chat.completions.create(
                model=str(serve_model_dir), messages=[{"role": "user", "content": f"story {i}"}], max_tokens=300,
                temperature=0, stream=True, stream_options={"include_usage": True})
            answers[i] = list(stream)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        health = url.removesuffix("/v1") + "/health"
        wait_for(lambda: httpx.get(health).json()["in_flight"] == 3, "three requests in flight")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert rc == 0
    assert proc.stdout.read() == ""
    records = [json.loads(ln) for ln in lines]  # every stderr line is a JSON record
    drain = next(r for r in records if r["event"] == "drain")
    assert drain["signal"] == "SIGTERM" and drain["in_flight"] >= 1  # the drain had something to wait for
    for i in range(3):
        chunks = answers[i]
        assert chunks[-1].usage.completion_tokens == 300
        assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert sum(r["event"] == "request" and r["status"] == 200 for r in records) == 3
    assert records[-1]["event"] == "stop"
