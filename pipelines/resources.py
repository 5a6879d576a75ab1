"""Dagster resources: small ConfigurableResources whose keys match the asset parameter names."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import dagster as dg

from assets.embed import DEFAULT_BACKEND, Embedder, embedder_fingerprint, load_embedder
from assets.index import PgVectorIndex, QdrantIndex, VectorIndex
from assets.stages import Quarantined


@cache
def _open_index(database_url: str | None, qdrant_url: str | None, qdrant_path: str | None, api_key: str | None) -> VectorIndex:
    # One client per process: Qdrant's local mode locks its folder, and connections are reused across steps.
    if qdrant_url or qdrant_path:
        return QdrantIndex(url=qdrant_url, path=Path(qdrant_path) if qdrant_path else None, api_key=api_key)
    if not database_url:
        raise ValueError("no index configured: set DATABASE_URL (pgvector) or QDRANT_URL / QDRANT_PATH")
    return PgVectorIndex(database_url)


class IndexResource(dg.ConfigurableResource):
    """The vector index: pgvector at `database_url`, or Qdrant at `qdrant_url` / in `qdrant_path`."""

    database_url: str | None = None
    qdrant_url: str | None = None
    qdrant_path: str | None = None
    qdrant_api_key: str | None = None

    def get(self) -> VectorIndex:
        return _open_index(self.database_url, self.qdrant_url, self.qdrant_path, self.qdrant_api_key)


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
    """The platform's data directory: quarantine records and mirrors of remote git sources."""

    data_dir: str
    max_file_bytes: int = 20_000_000

    @property
    def git_cache(self) -> Path:
        return Path(self.data_dir) / "git"

    def record_quarantine(self, collection: str, quarantined: list[Quarantined], parsed_ok: list[str]) -> Path:
        """Keep one JSON record per quarantined file (doc id and reason); drop records of files that now parse."""
        folder = Path(self.data_dir) / "quarantine" / collection
        folder.mkdir(parents=True, exist_ok=True)
        for doc_id in parsed_ok:
            (folder / _record_name(doc_id)).unlink(missing_ok=True)
        for item in quarantined:
            (folder / _record_name(item.doc_id)).write_text(json.dumps({"doc_id": item.doc_id, "reason": item.reason}))
        return folder


class EventQueueResource(dg.ConfigurableResource):
    """Where webhook events are queued (the platform's Postgres)."""

    database_url: str


def _record_name(doc_id: str) -> str:
    return doc_id.replace("/", "__") + ".json"
