"""The webhook event queue in Postgres: the API (or `kb webhook`) writes, the Dagster sensor reads.

Source-system payloads (Gitea/GitHub push, incident closed, ArgoCD deploy) are reduced here to
"these documents of this collection changed", so a run reindexes only them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from assets.collections import CollectionSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_webhook_events (
    id bigserial PRIMARY KEY,
    source text NOT NULL,
    collection text NOT NULL,
    doc_ids jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Event:
    id: int
    source: str
    collection: str
    doc_ids: list[str]


def _connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(SCHEMA)
    return conn


def enqueue(url: str, source: str, collection: str, doc_ids: Sequence[str]) -> int:
    """Queue one event; returns its id."""
    if not doc_ids:
        raise ValueError("an event must name at least one document")
    with _connect(url) as conn:
        row = conn.execute(
            "INSERT INTO kb_webhook_events (source, collection, doc_ids) VALUES (%s, %s, %s::jsonb) RETURNING id",
            (source, collection, json.dumps(sorted(set(doc_ids)))),
        ).fetchone()
    assert row is not None
    return int(row[0])


def events_after(url: str, after_id: int, limit: int = 500) -> list[Event]:
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT id, source, collection, doc_ids FROM kb_webhook_events WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit),
        ).fetchall()
    return [Event(int(r[0]), r[1], r[2], list(r[3])) for r in rows]


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
