"""Prometheus metrics: a histogram per answering stage, counters per collection and outcome."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

STAGE_MS = Histogram("kb_stage_duration_ms", "Duration of an answering stage in milliseconds.", ["stage"], buckets=BUCKETS_MS,
                     registry=REGISTRY)  # fmt: skip
REQUESTS = Counter("kb_requests_total", "Answering requests by endpoint and outcome.", ["endpoint", "outcome"], registry=REGISTRY)
SOURCES = Counter("kb_sources_returned_total", "Sources returned, by collection.", ["collection"], registry=REGISTRY)
WEBHOOKS = Counter("kb_webhooks_total", "Webhook deliveries by source and outcome.", ["source", "outcome"], registry=REGISTRY)


def observe(timings: dict[str, float], sources: list[dict[str, object]] | None = None) -> None:
    for name, value in timings.items():
        STAGE_MS.labels(stage=name.removesuffix("_ms")).observe(value)
    for source in sources or []:
        SOURCES.labels(collection=str(source.get("collection", ""))).inc()
