import dagster as dg

from assets.factory import STAGES
from pipelines.definitions import build_definitions
from pipelines.resources import EmbedderResource, EventQueueResource, IndexResource, StorageResource


def test_every_configured_collection_gets_its_asset_group_checks_job_and_schedule(sample_specs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    resources = {
        "index": IndexResource(qdrant_path=str(tmp_path / "q")),
        "embedder": EmbedderResource(model_dir=str(tmp_path)),
        "storage": StorageResource(data_dir=str(tmp_path)),
        "events": EventQueueResource(database_url="postgresql://unused"),
    }
    defs = build_definitions(sample_specs, resources)
    repo = defs.get_repository_def()
    keys = set(repo.assets_defs_by_key)
    for spec in sample_specs:
        assert {dg.AssetKey([spec.name, stage]) for stage in STAGES} <= keys
        assert repo.get_job(f"ingest_{spec.name}")
    check_names = {key.name for a in repo.assets_defs_by_key.values() for key in a.check_keys}
    assert {"non_empty_text", "no_unmasked_secrets", "chunk_bounds", "duplicate_chunks", "vector_quality"} <= check_names
    crons = {s.name: s.cron_schedule for s in repo.schedule_defs}
    assert crons == {"technical_docs_refresh": "0 3 * * *", "runbooks_refresh": "0 4 * * 1"}
    assert [s.name for s in repo.sensor_defs] == ["webhook_events"]


def test_the_code_location_loads_the_operations_jobs_next_to_the_collections() -> None:
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    assert {"backup", "retention", "knowledge_gaps_report"} <= set(repo.job_names)
    assert {"backup_daily", "retention_daily", "knowledge_gaps_weekly"} <= {s.name for s in repo.schedule_defs}
    operations = {key.path[-1] for key, a in repo.assets_defs_by_key.items() if a.group_names_by_key.get(key) == "operations"}
    assert {"knowledge_gaps", "retention_summaries", "retention_archive", "retention_purge", "retention_audit"} <= operations
