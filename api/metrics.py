"""Prometheus metrics: a histogram per answering stage, counters per collection and outcome, and usage analytics
(answers answered or refused, feedback votes, sessions; active users and conversation lengths read from PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from query_engine.engine import Answer
    from query_engine.feedback import UsageSnapshot

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)

STAGE_MS = Histogram("kb_stage_duration_ms", "Duration of an answering stage in milliseconds.", ["stage"], buckets=BUCKETS_MS,
                     registry=REGISTRY)  # fmt: skip
REQUESTS = Counter("kb_requests_total", "Answering requests by endpoint and outcome.", ["endpoint", "outcome"], registry=REGISTRY)
SOURCES = Counter("kb_sources_returned_total", "Sources returned, by collection.", ["collection"], registry=REGISTRY)
WEBHOOKS = Counter("kb_webhooks_total", "Webhook deliveries by source and outcome.", ["source", "outcome"], registry=REGISTRY)
# Its _count is the number of answers: refused / all is the refusal rate, and latency is seen apart for the refusals,
# which skip the LLM and would otherwise pull the answered ones' quantiles down.
ANSWER_MS = Histogram("kb_answer_duration_ms", "Time to a whole answer in milliseconds, by endpoint and outcome (answered, "
                      "or refused: nothing relevant was found, or grounding left nothing to say).", ["endpoint", "outcome"],
                      buckets=BUCKETS_MS, registry=REGISTRY)  # fmt: skip
FEEDBACK = Counter("kb_feedback_total", "Feedback votes given on answers, by rating (a changed vote counts again).", ["rating"],
                   registry=REGISTRY)  # fmt: skip
SESSIONS_CREATED = Counter("kb_sessions_created_total", "Conversations started through the chat API.", registry=REGISTRY)
for _rating in ("up", "down"):  # both series exist from the start, so a ratio of their rates is defined at once
    FEEDBACK.labels(rating=_rating)
for _outcome in ("answered", "refused"):
    ANSWER_MS.labels(endpoint="chat", outcome=_outcome)


def observe(timings: dict[str, float], sources: list[dict[str, object]] | None = None) -> None:
    for name, value in timings.items():
        STAGE_MS.labels(stage=name.removesuffix("_ms")).observe(value)
    for source in sources or []:
        SOURCES.labels(collection=str(source.get("collection", ""))).inc()


def answer_outcome(answer: Answer) -> str:
    """'refused' when the answer is the knowledge base's "not found": the engine and the agent refuse without
    calling the LLM (so their timings have no llm_first_token), and grounding may leave nothing of what it wrote."""
    if "llm_first_token_ms" not in answer.timings or answer.grounding.get("refused_after_grounding"):
        return "refused"
    return "answered"


def observe_answer(endpoint: str, answer: Answer) -> str:
    """Count one whole answer with its latency; returns its outcome."""
    outcome = answer_outcome(answer)
    ANSWER_MS.labels(endpoint=endpoint, outcome=outcome).observe(answer.timings.get("total_ms", 0.0))
    return outcome


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


class QuarantineCollector(Collector):
    """`kb_quarantined_documents{collection,reason}`, read from kb_quarantine at scrape time (ingestion runs in Dagster's
    processes, so the API learns of quarantined documents only from the database); `reason` is the short kind code
    (oversize, invalid_encoding, parse_timeout, unmasked_secret, outside_source, ...). Not exported while the database
    is down."""

    NAME = "kb_quarantined_documents"
    HELP = "Documents left out of the index, by collection and reason; they are tried again on every run."

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["collection", "reason"])]

    def collect(self) -> Iterator[Metric]:
        from kb.quarantine import counts

        try:
            found = counts(self.database_url)
        except psycopg.Error as error:
            log.warning("kb_quarantined_documents not exported: %s", type(error).__name__)
            return
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["collection", "reason"])
        for (collection, reason), value in sorted(found.items()):
            family.add_metric([collection, reason], value)
        yield family


_database_collectors: dict[tuple[CollectorRegistry, type[Collector]], Collector] = {}


def _register_once(collector: Collector, registry: CollectorRegistry) -> None:
    """Register `collector`, replacing an earlier one of its class on this registry."""
    earlier = _database_collectors.pop((registry, type(collector)), None)
    if earlier is not None:
        with contextlib.suppress(KeyError):
            registry.unregister(earlier)
    _database_collectors[(registry, type(collector))] = collector
    registry.register(collector)


def register_backup_collector(database_url: str, registry: CollectorRegistry = REGISTRY) -> BackupCollector:
    """Export the last backup's time on /metrics; calling it again replaces the earlier collector."""
    collector = BackupCollector(database_url)
    _register_once(collector, registry)
    return collector


def register_quarantine_collector(database_url: str, registry: CollectorRegistry = REGISTRY) -> QuarantineCollector:
    """Export the quarantined documents on /metrics; calling it again replaces the earlier collector."""
    collector = QuarantineCollector(database_url)
    _register_once(collector, registry)
    return collector


class UsageCollector(Collector):
    """Usage gauges read from PostgreSQL at scrape time (every API replica exports the same values: take max(), not
    sum(), across instances). The figures change slowly, so one read serves the scrapes of `ttl_s` seconds; a
    scrape while the database is down exports none of them (and logs why) once the cached read is older than that."""

    def __init__(self, database_url: str, ttl_s: float = 60.0) -> None:
        self.database_url = database_url
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._cached: tuple[float, UsageSnapshot] | None = None

    def describe(self) -> list[Metric]:
        return list(_usage_families())  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is not None:
            yield from _usage_families(snapshot)

    def snapshot(self) -> UsageSnapshot | None:
        """The cached figures, read again when older than the TTL; None when they cannot be read."""
        from query_engine.feedback import read_usage

        with self._lock:  # concurrent scrapes share one read
            if self._cached is not None and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            try:
                snapshot = read_usage(self._connect())
            except SQLAlchemyError as error:
                log.warning("usage gauges not exported: %s", type(error).__name__)
                self._cached = None
                return None
            self._cached = (time.monotonic(), snapshot)
            return snapshot

    def _connect(self) -> Engine:
        from query_engine.memory import sqlalchemy_url

        if self._engine is None:
            # One connection, short timeouts: a slow database must not hold a scrape (Prometheus times out at 10 s).
            self._engine = create_engine(sqlalchemy_url(self.database_url), pool_size=1, max_overflow=0, pool_pre_ping=True,
                                         connect_args={"connect_timeout": 3, "options": "-c statement_timeout=5000"})  # fmt: skip
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _usage_families(snapshot: UsageSnapshot | None = None) -> Iterator[Metric]:
    """The usage metric families, empty for describe() and filled from a snapshot for collect()."""
    users = GaugeMetricFamily("kb_active_users", "Distinct users who wrote a message in the window (1d, 7d, 30d).",
                              labels=["window"])  # fmt: skip
    sessions = GaugeMetricFamily("kb_sessions_active", "Conversations with a message in the window (1d, 7d).", labels=["window"])
    lengths = SummaryMetricFamily("kb_messages_per_session", "Messages of each conversation active in the window (1d, 7d), "
                                  "with the median and 95th percentile.", labels=["window"])  # fmt: skip
    votes = GaugeMetricFamily("kb_feedback_votes", "Standing feedback votes first given in the window (1d, 7d), by rating.",
                              labels=["rating", "window"])  # fmt: skip
    if snapshot is not None:
        for window, value in snapshot.active_users.items():
            users.add_metric([window], value)
        for window, value in snapshot.active_sessions.items():
            sessions.add_metric([window], value)
        for window, (count, total, p50, p95) in snapshot.messages_per_session.items():
            for quantile, length in (("0.5", p50), ("0.95", p95)):
                if length is not None:  # no conversation in the window: no quantile, rather than a made-up 0
                    lengths.samples.append(Sample(lengths.name, {"window": window, "quantile": quantile}, length))
            lengths.add_metric([window], count_value=count, sum_value=total)
        for (rating, window), value in snapshot.feedback_votes.items():
            votes.add_metric([rating, window], value)
    yield from (users, sessions, lengths, votes)


_usage_collectors: dict[CollectorRegistry, UsageCollector] = {}


def register_usage_collector(database_url: str, registry: CollectorRegistry = REGISTRY, ttl_s: float = 60.0) -> UsageCollector:
    """Export the usage gauges on /metrics; calling it again replaces the earlier collector."""
    earlier = _usage_collectors.pop(registry, None)
    if earlier is not None:
        with contextlib.suppress(KeyError):
            registry.unregister(earlier)
        earlier.close()
    collector = _usage_collectors[registry] = UsageCollector(database_url, ttl_s)
    registry.register(collector)
    return collector
