"""The webhook event queue in Postgres: the API (or `kb webhook`) writes, the Dagster sensor claims.

Source-system payloads (Gitea/GitHub push, incident closed, ArgoCD deploy) are reduced here to
"these documents of this collection changed", so a run reindexes only them.

A burst of deliveries (a busy repository, a replayed hook) must neither be lost nor become a run each: the
sensor claims every pending event of a collection at once into a numbered batch, one run per collection and
batch, and its cursor (the last batch the daemon stored) acknowledges them. Claiming by a stamp instead of
reading past an id watermark matters under concurrency: ids are drawn before their insert commits, so an
event with a smaller id can become visible after a larger one was read, and a watermark would skip it.
"""

from __future__ import annotations

import atexit
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from assets.collections import CollectionSpec

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kb_webhook_events (
        id bigserial PRIMARY KEY,
        source text NOT NULL,
        collection text NOT NULL,
        doc_ids jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    )""",
    # The batch that claimed the event (NULL: pending). Batches up to the sensor's cursor are acknowledged.
    "ALTER TABLE kb_webhook_events ADD COLUMN IF NOT EXISTS batch bigint",
    "CREATE INDEX IF NOT EXISTS kb_webhook_events_batch ON kb_webhook_events (batch)",
)
# Serializes schema creation (concurrent CREATE TABLE IF NOT EXISTS can fail) and claims (two claimers must
# not number two batches alike): b"kb_event" read as a big-endian integer.
LOCK_KEY = 0x6B625F6576656E74
# Acknowledged events are kept this long (what triggered recent runs), then deleted by the next claim.
KEEP_ACKNOWLEDGED_DAYS = 7

# Connections per database and process: a burst is hundreds of deliveries a second, and a new connection each
# (a backend process forked for one INSERT) cost more than the insert. Idle ones close after POOL_IDLE_S.
POOL_SIZE = 4
POOL_IDLE_S = 30.0
# A schema change an older table lacks (a restore of an older dump): create the schema again and retry.
_SCHEMA_ERRORS = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)

_pools: dict[str, ConnectionPool[Any]] = {}
_ready: set[str] = set()  # database URLs whose schema this process has created
_lock = threading.Lock()


@dataclass(frozen=True)
class Event:
    id: int
    source: str
    collection: str
    doc_ids: list[str]


@dataclass(frozen=True)
class Batch:
    """The pending events of one collection claimed together: one run over their documents."""

    collection: str
    doc_ids: list[str]  # deduplicated, sorted
    deliveries: int  # how many events it coalesces


def _ensure_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        for statement in SCHEMA:
            conn.execute(statement)


def _pool(url: str) -> ConnectionPool[Any]:
    with _lock:
        pool = _pools.get(url)
        if pool is None:
            # Checked when taken: after a PostgreSQL restart the idle connections are dead.
            pool = ConnectionPool(url, min_size=0, max_size=POOL_SIZE, max_idle=POOL_IDLE_S, kwargs={"autocommit": True},
                                  check=ConnectionPool.check_connection, open=True)  # fmt: skip
            _pools[url] = pool
        return pool


@atexit.register
def close_pools() -> None:
    """Close this process' connections to the queue (at exit, and for tests that drop a database)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
        _ready.clear()
    for pool in pools:
        pool.close()


@contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection on a database with the queue's schema, created once per process: the DDL takes a table
    lock that would queue every delivery of a burst behind the others."""
    with _pool(url).connection() as conn:
        if url not in _ready:
            with _lock:
                if url not in _ready:
                    _ensure_schema(conn)
                    _ready.add(url)
        yield conn


def _with_schema(url: str, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run one statement; when the table is gone or older (a restore replaced it) create the schema again."""
    with _connect(url) as conn:
        try:
            return conn.execute(statement, params).fetchall()
        except _SCHEMA_ERRORS:
            _ensure_schema(conn)
            return conn.execute(statement, params).fetchall()


def enqueue(url: str, source: str, collection: str, doc_ids: Sequence[str]) -> int:
    """Queue one event; returns its id."""
    if not doc_ids:
        raise ValueError("an event must name at least one document")
    rows = _with_schema(
        url,
        "INSERT INTO kb_webhook_events (source, collection, doc_ids) VALUES (%(source)s, %(collection)s, %(docs)s::jsonb)"
        " RETURNING id",
        {"source": source, "collection": collection, "docs": json.dumps(sorted(set(doc_ids)))},
    )
    return int(rows[0][0])


def events_after(url: str, after_id: int, limit: int = 500) -> list[Event]:
    """Events by id, for inspection (`kb webhook`, tests); the sensor claims with `claim_batches`."""
    rows = _with_schema(
        url,
        "SELECT id, source, collection, doc_ids FROM kb_webhook_events WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",
        {"after": after_id, "limit": limit},
    )
    return [Event(int(r[0]), r[1], r[2], list(r[3])) for r in rows]


def claim_batches(url: str, acknowledged: int, debounce_s: float, max_wait_s: float) -> tuple[int, list[Batch]]:
    """Claim what is pending into a new batch number; returns it and one Batch per collection (none: nothing ready).

    Pending: events in no batch, or in a batch after `acknowledged` (claimed by a sensor tick whose result the
    daemon never stored; they are claimed again, so a crash between claim and run loses nothing). A collection
    is ready when its newest pending event is `debounce_s` old (the burst is over) or its oldest is `max_wait_s`
    old (a steady stream still gets runs). One transaction: the rows are locked (FOR UPDATE SKIP LOCKED, so a
    claim never waits) and stamped, and a delivery whose insert has not committed yet stays for the next claim.
    """
    with _connect(url) as conn:
        try:
            number, rows = _claim(conn, acknowledged, debounce_s, max_wait_s)
        except _SCHEMA_ERRORS:  # a restore replaced the table since this process created it
            _ensure_schema(conn)
            number, rows = _claim(conn, acknowledged, debounce_s, max_wait_s)
    docs: dict[str, set[str]] = {}
    deliveries: dict[str, int] = {}
    for collection, doc_ids in rows:
        docs.setdefault(collection, set()).update(doc_ids)
        deliveries[collection] = deliveries.get(collection, 0) + 1
    return number, [Batch(c, sorted(docs[c]), deliveries[c]) for c in sorted(docs)]


def _claim(conn: psycopg.Connection[Any], acknowledged: int, debounce_s: float, max_wait_s: float) -> tuple[int, list[Any]]:
    """The claim's one transaction, under the claimers' lock: old acknowledged events go, the next batch number is
    drawn, and the ready collections' pending events are stamped with it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            "DELETE FROM kb_webhook_events WHERE batch <= %s AND received_at < now() - make_interval(days => %s)",
            (acknowledged, KEEP_ACKNOWLEDGED_DAYS),
        )
        row = conn.execute("SELECT coalesce(max(batch), 0) FROM kb_webhook_events").fetchone()
        number = max(acknowledged, int(row[0]) if row else 0) + 1
        rows = conn.execute(
            """WITH pending AS (
                   SELECT id, collection, received_at FROM kb_webhook_events
                   WHERE batch IS NULL OR batch > %(acknowledged)s FOR UPDATE SKIP LOCKED),
               ready AS (
                   SELECT collection FROM pending GROUP BY collection
                   HAVING max(received_at) <= now() - make_interval(secs => %(debounce)s)
                       OR min(received_at) <= now() - make_interval(secs => %(max_wait)s))
               UPDATE kb_webhook_events SET batch = %(number)s
               WHERE id IN (SELECT id FROM pending WHERE collection IN (SELECT collection FROM ready))
               RETURNING collection, doc_ids""",
            {"acknowledged": acknowledged, "debounce": debounce_s, "max_wait": max_wait_s, "number": number},
        ).fetchall()
    return number, rows


def changed_paths(payload: dict[str, Any]) -> tuple[str, list[str]]:
    """Repository full name and the paths a Gitea/GitHub push touched (added, modified or removed)."""
    repository = str((payload.get("repository") or {}).get("full_name", ""))
    paths: set[str] = set()
    for commit in payload.get("commits") or []:
        for key in ("added", "modified", "removed"):
            paths.update(commit.get(key) or [])
    return repository, sorted(paths)


def route_push(payload: dict[str, Any], specs: Sequence[CollectionSpec]) -> dict[str, list[str]]:
    """Collection → doc ids for a push: collections bound to the pushed repository (all when none is
    bound), with paths made relative to each collection's subdir."""
    repository, paths = changed_paths(payload)
    bound = [s for s in specs if s.source.repository and s.source.repository == repository]
    routed: dict[str, list[str]] = {}
    for spec in bound or [s for s in specs if not s.source.repository]:
        prefix = f"{spec.source.subdir.strip('/')}/" if spec.source.subdir else ""
        ids = [p[len(prefix) :] for p in paths if p.startswith(prefix)]
        if ids:
            routed[spec.name] = ids
    return routed
