"""Prometheus metrics: a histogram per answering stage, counters per collection and outcome."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

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


class BackupCollector(Collector):
    """`kb_backup_last_success_timestamp`, read from kb_backups at scrape time: the daily job runs in another process,
    so the API learns of a backup only from the database. Not exported for a scrape where the database is down."""

    NAME = "kb_backup_last_success_timestamp"
    HELP = "When the newest successful backup finished, in seconds since the epoch; 0 when there is none."

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP)]  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        from kb.ops.backup import last_backup_timestamp

        try:
            value = last_backup_timestamp(self.database_url)
        except psycopg.Error as error:
            log.warning("kb_backup_last_success_timestamp not exported: %s", type(error).__name__)
            return
        yield GaugeMetricFamily(self.NAME, self.HELP, value=value)


_backup_collectors: dict[CollectorRegistry, BackupCollector] = {}


def register_backup_collector(database_url: str, registry: CollectorRegistry = REGISTRY) -> BackupCollector:
    """Export the last backup's time on /metrics; calling it again replaces the earlier collector."""
    earlier = _backup_collectors.pop(registry, None)
    if earlier is not None:
        with contextlib.suppress(KeyError):
            registry.unregister(earlier)
    collector = _backup_collectors[registry] = BackupCollector(database_url)
    registry.register(collector)
    return collector
