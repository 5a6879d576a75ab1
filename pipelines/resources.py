"""Dagster resources: small ConfigurableResources whose keys match the asset parameter names."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import dagster as dg

from assets.budget import ParseBudget
from assets.collections import load_specs
from assets.embed import DEFAULT_BACKEND, Embedder, embedder_fingerprint, load_embedder
from assets.index import PgVectorIndex, QdrantIndex, VectorIndex
from assets.stages import ExtractResult, ParseResult, Quarantined
from kb.quarantine import QuarantineRecord, list_records, replace_records


@cache
def _open_index(
    database_url: str | None, qdrant_url: str | None, qdrant_path: str | None, api_key: str | None,
    collections_file: str | None = None,
) -> VectorIndex:  # fmt: skip
    # One client per process: Qdrant's local mode locks its folder, and connections are reused across steps.
    if qdrant_url or qdrant_path:
        # Ingestion creates the collections: each with its shards and replicas from collections.yaml.
        layouts = {s.name: s.qdrant for s in load_specs(Path(collections_file))} if collections_file else {}
        return QdrantIndex(url=qdrant_url, path=Path(qdrant_path) if qdrant_path else None, api_key=api_key, layouts=layouts)
    if not database_url:
        raise ValueError("no index configured: set DATABASE_URL (pgvector) or QDRANT_URL / QDRANT_PATH")
    return PgVectorIndex(database_url)


class IndexResource(dg.ConfigurableResource):
    """The vector index: pgvector at `database_url`, or Qdrant at `qdrant_url` / in `qdrant_path`."""

    database_url: str | None = None
    qdrant_url: str | None = None
    qdrant_path: str | None = None
    qdrant_api_key: str | None = None
    collections_file: str | None = None  # the `qdrant:` layout of each collection a Qdrant index creates

    def get(self) -> VectorIndex:
        return _open_index(self.database_url, self.qdrant_url, self.qdrant_path, self.qdrant_api_key, self.collections_file)


class EmbedderResource(dg.ConfigurableResource):
    """The embedding model (dual, a FlagEmbedding model directory, or the multilingual USE), loaded once per process."""

    model_dir: str
    backend: str = DEFAULT_BACKEND
    pooling: str = "mean"
    batch_size: int = 32
    max_length: int = 512

    def get(self) -> Embedder:
        return load_embedder(self.backend, self.model_dir, self.pooling, self.batch_size, self.max_length)

    def fingerprint(self) -> str:
        """The loaded model's `model_id`, known without loading it."""
        return embedder_fingerprint(self.backend, Path(self.model_dir), self.pooling)


class StorageResource(dg.ConfigurableResource):
    """The platform's data directory (mirrors of remote git sources) and where quarantined documents are recorded
    (the platform's PostgreSQL, so every replica and `kb quarantine` see one list)."""

    data_dir: str
    database_url: str | None = None
    max_file_bytes: int = 20_000_000
    parse_timeout_s: float = 60.0
    parse_memory_mb: int = 2048
    parse_workers: int = 1

    @property
    def parse_budget(self) -> ParseBudget:
        return ParseBudget(self.parse_timeout_s, self.parse_memory_mb, self.parse_workers)

    @property
    def git_cache(self) -> Path:
        return Path(self.data_dir) / "git"

    def record_quarantine(
        self, collection: str, extracted: ExtractResult, parsed: ParseResult, quarantined: list[Quarantined]
    ) -> list[QuarantineRecord]:
        """Record what this run left out and clear what it fixed; returns the collection's quarantine as it now stands.

        A quarantined document is tried again on every run (the index never holds its current hash), so a run over the
        whole source sees the whole quarantine and replaces it; a webhook run only replaces the records of its documents.
        Without `database_url` (ingestion alone on a Qdrant index, no platform database) nothing is kept: the run's
        Dagster check and `kb ingest --json` still list what it left out.
        """
        records = [QuarantineRecord(collection, q.doc_id, q.stage, q.kind, q.reason) for q in quarantined]
        if not self.database_url:  # ingestion alone on Qdrant, without the platform: this run's list, kept nowhere
            return records
        left_out = {q.doc_id for q in quarantined}
        if extracted.scope is None:
            replace_records(self.database_url, collection, records, cleared=(), keep_only=left_out)
        else:
            cleared = [d for d in [*extracted.scope, *(doc.doc_id for doc in parsed.documents)] if d not in left_out]
            replace_records(self.database_url, collection, records, cleared=cleared, keep_only=None)
        return list_records(self.database_url, collection)


class EventQueueResource(dg.ConfigurableResource):
    """Where webhook events are queued (the platform's Postgres)."""

    database_url: str
