"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide).

metrics.completed(completion)     # a finished chat completion: counts, TTFT, tokens, decode speed
metrics.error(429)                # a refused or failed request
metrics.cancelled()               # a stream the client left: its generation stopped or never ran
metrics.render()                  # the text GET /metrics returns
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends (Linux)
        self.requests = Counter("serve_requests_total", "finished chat completions", registry=self.registry)
        self.errors = Counter(
            "serve_errors_total", "refused or failed requests", ["status"], registry=self.registry
        )
        self.cancellations = Counter(
            "serve_cancelled_total",
            "streamed completions stopped or skipped because the client left",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "serve_ttft_seconds",
            "time from request to first token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.tokens = Histogram(
            "serve_completion_tokens",
            "new tokens per completion",
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
            registry=self.registry,
        )
        self.speed = Histogram(
            "serve_decode_tokens_per_second",
            "decode speed after the first token",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=self.registry,
        )

    def completed(self, completion: Any) -> None:
        self.requests.inc()
        timings = completion.timings()
        if timings["ttft_ms"] is not None:
            self.ttft.observe(timings["ttft_ms"] / 1000)
        if timings["tokens_per_s"] is not None:
            self.speed.observe(timings["tokens_per_s"])
        self.tokens.observe(completion.completion_tokens)

    def cancelled(self) -> None:
        self.cancellations.inc()

    def error(self, status: int) -> None:
        self.errors.labels(status=str(status)).inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()
