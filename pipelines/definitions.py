"""The Dagster code location: one asset group per configured collection, plus the webhook sensor."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from assets.collections import CollectionSpec, load_specs
from assets.factory import build_collection_defs
from kb.settings import EmbeddingSettings, IndexSettings, PlatformSettings, PostgresSettings
from pipelines.backup import build_backup_defs
from pipelines.knowledge_gaps import build_knowledge_gaps_defs
from pipelines.resources import EmbedderResource, EventQueueResource, IndexResource, StorageResource
from pipelines.retention import build_retention_defs
from pipelines.sensors import build_webhook_sensor


def database_url(platform: PlatformSettings, postgres: PostgresSettings) -> str:
    """DATABASE_URL when set, else the embedded server's database."""
    return postgres.database_url or f"postgresql://postgres@{platform.host}:{platform.postgres_port}/kb"


def build_resources(
    platform: PlatformSettings, postgres: PostgresSettings, index: IndexSettings, embedding: EmbeddingSettings
) -> dict[str, dg.ConfigurableResource]:
    url = database_url(platform, postgres)
    return {
        "index": IndexResource(
            database_url=url if index.backend == "pgvector" else None,
            qdrant_url=index.qdrant_url,
            qdrant_path=str(index.qdrant_path) if index.qdrant_path else None,
            qdrant_api_key=index.qdrant_api_key,
            collections_file=str(platform.collections_file),
        ),
        "embedder": EmbedderResource(**embedding.resource_fields()),
        "storage": StorageResource(
            data_dir=str(platform.data_dir),
            database_url=url,
            max_file_bytes=platform.max_file_bytes,
            parse_timeout_s=platform.parse_timeout_s,
            parse_memory_mb=platform.parse_memory_mb,
            parse_workers=platform.parse_workers,
        ),  # fmt: skip
        "events": EventQueueResource(database_url=url),
    }


def build_definitions(specs: Sequence[CollectionSpec], resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """All collections' assets, checks, jobs and schedules, the sensor, and shared resources.

    Steps run in one process by default: the embedding model loads once per run instead of once per
    step, and Qdrant's local mode allows one process. Scale out with the dagster-k8s or celery executor.
    """
    per_collection = [build_collection_defs(spec) for spec in specs]
    jobs = [job for defs in per_collection for job in (defs.jobs or [])]
    shared = dg.Definitions(sensors=[build_webhook_sensor(jobs)], resources=resources, executor=dg.in_process_executor)
    return dg.Definitions.merge(*per_collection, shared)


def _defs() -> dg.Definitions:
    platform, postgres, index = PlatformSettings(), PostgresSettings(), IndexSettings()
    collections = build_definitions(
        load_specs(platform.collections_file), build_resources(platform, postgres, index, EmbeddingSettings())
    )
    return dg.Definitions.merge(
        collections,
        build_backup_defs(platform, postgres, index),
        build_retention_defs(platform, postgres),
        build_knowledge_gaps_defs(platform, postgres),
    )


defs = _defs()
