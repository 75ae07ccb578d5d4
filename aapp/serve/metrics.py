"""The server's Prometheus metrics, in a registry of its own (two servers in one process keep apart)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from aapp.serve.policy import Served


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("aapp_requests", "Completion requests (chat and legacy) by outcome", ["status"], registry=r)
        self.prompt_tokens = Counter("aapp_prompt_tokens", "Prompt tokens read", registry=r)
        self.completion_tokens = Counter("aapp_completion_tokens", "Tokens generated", registry=r)
        self.gate_fires = Counter("aapp_gate_fires", "Requests whose risk gate fired", registry=r)
        # An escalation is a fired request run under a heavier policy than the base ratio's pruning:
        # protected (on_fire=protect), dense, or a lighter ratio R.
        self.escalations = Counter("aapp_gate_escalations", "Requests run under a heavier policy because the gate "
                                   "fired", registry=r)
        self.queue_depth = Gauge("aapp_queue_depth", "Requests admitted and waiting for the model", registry=r)
        self.in_flight = Gauge("aapp_requests_in_flight", "Requests admitted and not yet answered", registry=r)
        self.latency = Histogram("aapp_request_latency_seconds", "From admission to the last token",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160), registry=r)

    def observe(self, status: str, latency_s: float, prompt_tokens: int, completion_tokens: int,
                served: Served | None) -> None:
        self.requests.labels(status).inc()
        self.latency.observe(latency_s)
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        fired = served is not None and served.report.facts is not None and served.report.facts.fired
        if fired:
            self.gate_fires.inc()
        if fired and served.policy != "pruned":
            self.escalations.inc()

    def reject(self, status: int) -> None:
        self.requests.labels(str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
