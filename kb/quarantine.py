"""Quarantined documents in the platform's PostgreSQL: the ingestion run writes, the Dagster check, `kb ingest --json`,
`kb quarantine` and the API's `kb_quarantined_documents` gauge read.

A record says which document of a collection was left out of the index, at which stage and why (a short `kind` code
for dashboards, a message for people; never the document's text). A run replaces the records of every document it
looked at: a fixed file lands and its record goes, a deleted file takes its record with it. PostgreSQL rather than
files, so every API replica and the Dagster daemon see the same list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_quarantine (
    collection text NOT NULL,
    doc_id text NOT NULL,
    stage text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, doc_id)
)"""


@dataclass(frozen=True)
class QuarantineRecord:
    collection: str
    doc_id: str
    stage: str
    kind: str
    reason: str
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def as_dict(self) -> dict[str, str]:
        return {"doc_id": self.doc_id, "stage": self.stage, "kind": self.kind, "reason": self.reason}


def _connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(SCHEMA)
    return conn


def replace_records(
    url: str, collection: str, quarantined: Sequence[QuarantineRecord], cleared: Iterable[str], keep_only: Iterable[str] | None
) -> None:
    """In one transaction: drop the records of `cleared` documents (they landed, or left the source), and with
    `keep_only` (a whole-source run: every document the source holds) of every document not in it; then upsert the
    `quarantined` ones, keeping when each was first seen."""
    with _connect(url) as conn, conn.transaction():
        conn.execute("DELETE FROM kb_quarantine WHERE collection = %s AND doc_id = ANY(%s)", (collection, list(cleared)))
        if keep_only is not None:
            conn.execute(
                "DELETE FROM kb_quarantine WHERE collection = %s AND NOT (doc_id = ANY(%s))", (collection, list(keep_only))
            )
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO kb_quarantine (collection, doc_id, stage, kind, reason) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (collection, doc_id) DO UPDATE SET stage = EXCLUDED.stage, kind = EXCLUDED.kind, "
                "reason = EXCLUDED.reason, last_seen = now()",
                [(collection, q.doc_id, q.stage, q.kind, q.reason) for q in quarantined],
            )


def list_records(url: str, collection: str | None = None) -> list[QuarantineRecord]:
    """The quarantined documents, of one collection or all, by collection and doc id."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT collection, doc_id, stage, kind, reason, first_seen, last_seen FROM kb_quarantine "
            "WHERE %s::text IS NULL OR collection = %s ORDER BY collection, doc_id",
            (collection, collection),
        ).fetchall()
    return [QuarantineRecord(*row) for row in rows]


def counts(url: str) -> dict[tuple[str, str], int]:
    """(collection, kind) → number of quarantined documents."""
    with _connect(url) as conn:
        rows = conn.execute("SELECT collection, kind, count(*) FROM kb_quarantine GROUP BY collection, kind").fetchall()
    return {(str(c), str(k)): int(n) for c, k, n in rows}
