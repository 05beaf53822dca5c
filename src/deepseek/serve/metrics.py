"""Prometheus metrics of one server (its own registry, so two apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # the *_created series only double what Prometheus scrapes

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ds_serve_requests", "Requests answered", ["route", "model", "code"], registry=r)
        self.latency = Histogram("ds_serve_request_seconds", "Request latency", ["route", "model"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("ds_serve_batch_size", "Samples per forward pass", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.queue_depth = Gauge("ds_serve_queue_depth", "Samples waiting or running", ["model"], registry=r)
        self.jobs = Gauge("ds_serve_jobs", "Jobs by state", ["state"], registry=r)
        self.first_event = Histogram("ds_serve_stream_first_event_seconds", "Time to the first streamed event",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip

    def batch_observer(self, model: str) -> Callable[[int], None]:
        return self.batch_size.labels(model).observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
