"""The Dagster pipeline against the real embedded PostgreSQL (pgvector) and the real embedding model."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.collections import CollectionSpec
from assets.extract import GitSource
from assets.index import PgVectorIndex
from kb.events import enqueue
from kb.ingest import ingest_collections
from kb.quarantine import list_records
from kb.settings import EmbeddingSettings
from pipelines.definitions import build_definitions
from pipelines.resources import EmbedderResource, EventQueueResource, IndexResource, StorageResource
from pipelines.sensors import DEBOUNCE_S


def resources(postgres_url: str, data_dir: Path, max_file_bytes: int = 1_000_000) -> dict[str, dg.ConfigurableResource]:
    embedding = EmbeddingSettings()
    return {
        "index": IndexResource(database_url=postgres_url),
        "embedder": EmbedderResource(model_dir=str(embedding.model_dir)),
        "storage": StorageResource(data_dir=str(data_dir), database_url=postgres_url, max_file_bytes=max_file_bytes),
        "events": EventQueueResource(database_url=postgres_url),
    }


def collection(sample_specs: list[CollectionSpec], base: str, folder: Path) -> CollectionSpec:
    """A uniquely named copy of a sample collection reading from `folder`, so tests never share an index table."""
    spec = next(s for s in sample_specs if s.name == base)
    return spec.model_copy(
        update={"name": f"t{uuid.uuid4().hex[:10]}", "source": spec.source.model_copy(update={"path": str(folder)})}
    )


def run(spec: CollectionSpec, res: dict[str, Any], paths: list[str] | None = None) -> dict[str, Any]:
    report = ingest_collections([spec], res, dg.DagsterInstance.ephemeral(), paths=paths or ())[spec.name]
    assert report["ok"], report
    return report


def stored_docs(postgres_url: str, spec: CollectionSpec) -> dict[str, list[str]]:
    index = PgVectorIndex(postgres_url)
    try:
        docs: dict[str, list[str]] = {}
        for chunk in index.stored_chunks(spec.name):
            docs.setdefault(chunk.doc_id, []).append(chunk.chunk_hash)
        return docs
    finally:
        index.close()


def test_switching_the_embedding_model_reembeds_every_chunk_in_the_new_space(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    spec = collection(sample_specs, "runbooks", sample_copy / "runbooks")
    res = resources(postgres_url, tmp_path / "data")
    first = run(spec, res)
    multilingual = EmbeddingSettings(backend="use-multilingual")
    res["embedder"] = EmbedderResource(**multilingual.resource_fields())
    switched = run(spec, res)
    # No vector of the old model is reused (same texts, other model), and the table now holds 512 dimensions.
    assert (switched["embedded"], switched["chunks"]) == (first["chunks"], first["chunks"])
    index = PgVectorIndex(postgres_url)
    try:
        vector = multilingual.load().embed_queries(["Как устранить отставание потребителей Kafka?"])[0]
        assert index.dense_search(spec.name, vector, 1)[0].doc_id == "kafka-consumer-lag.md"
    finally:
        index.close()


def test_rerun_changes_nothing_and_one_changed_file_reembeds_only_its_chunks(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    spec = collection(sample_specs, "runbooks", sample_copy / "runbooks")
    res = resources(postgres_url, tmp_path / "data")
    first = run(spec, res)
    assert first["documents"] == 12 and first["embedded"] == first["chunks"] > 12
    before = stored_docs(postgres_url, spec)

    again = run(spec, res)
    assert (again["embedded"], again["skipped_unchanged"], again["chunks"]) == (0, 12, first["chunks"])
    assert stored_docs(postgres_url, spec) == before

    target = sample_copy / "runbooks" / "kafka-consumer-lag.md"
    target.write_text(target.read_text() + "5. Record the lag figures in the incident timeline.\n")
    changed = run(spec, res)
    after = stored_docs(postgres_url, spec)
    assert changed["skipped_unchanged"] == 11
    assert changed["embedded"] == len(set(after["kafka-consumer-lag.md"]) - set(before["kafka-consumer-lag.md"])) == 1
    assert {d: h for d, h in after.items() if d != "kafka-consumer-lag.md"} == {
        d: h for d, h in before.items() if d != "kafka-consumer-lag.md"
    }


def test_deleted_source_file_leaves_the_index(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    spec = collection(sample_specs, "k8s_configs", sample_copy / "k8s_configs")
    res = resources(postgres_url, tmp_path / "data")
    first = run(spec, res)
    assert "gateway-core-deployment.yaml" in stored_docs(postgres_url, spec)
    (sample_copy / "k8s_configs" / "gateway-core-deployment.yaml").unlink()
    report = run(spec, res)
    assert report["deleted"] == 1 and report["embedded"] == 0
    assert report["chunks"] == first["chunks"] - 2  # the Deployment and the Service documents
    assert "gateway-core-deployment.yaml" not in stored_docs(postgres_url, spec)


def test_corrupt_files_are_quarantined_and_the_run_succeeds(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    folder = sample_copy / "technical_docs"
    spec = collection(sample_specs, "technical_docs", folder)
    res = resources(postgres_url, tmp_path / "data", max_file_bytes=50_000)
    first = run(spec, res)
    indexed_before = stored_docs(postgres_url, spec)

    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf" * 20)
    (folder / "junk.md").write_bytes(bytes(range(256)) * 4)
    (folder / "legacy.txt").write_bytes("Ledger r\xe9conciliation".encode("latin-1"))
    (folder / "huge.md").write_text("# Huge\n\n" + "word " * 20_000)
    # A document that was indexed and is now corrupt keeps its indexed chunks.
    (folder / "onboarding-guide.html").write_bytes(b"\x00\x00binary now")

    report = run(spec, res)
    reasons = {q["doc_id"]: q["reason"] for q in report["quarantined"]}
    assert set(reasons) == {"broken.pdf", "junk.md", "legacy.txt", "huge.md", "onboarding-guide.html"}
    assert "no text" in reasons["broken.pdf"] and "limit" in reasons["huge.md"] and "UTF-8" in reasons["legacy.txt"]
    assert report["chunks"] == first["chunks"]
    assert stored_docs(postgres_url, spec) == indexed_before
    records = {r.doc_id: r for r in list_records(postgres_url, spec.name)}
    assert set(records) == set(reasons) and records["huge.md"].kind == "oversize" and records["broken.pdf"].stage == "parse"


def test_webhook_event_reindexes_only_its_documents(
    postgres_url: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    folder = sample_copy / "code_snippets"
    spec = collection(sample_specs, "code_snippets", folder)
    res = resources(postgres_url, tmp_path / "data")
    run(spec, res)
    pushed = ["luhn.go", "fraud_features.py", "payments_api.py"]
    for name in [*pushed, "kafka_consumer.py"]:  # kafka_consumer.py changes too, but no event names it
        with (folder / name).open("a") as f:
            f.write("\n// reviewed\n" if name.endswith(".go") else "\n# reviewed\n")

    defs = build_definitions([spec], res)
    sensor = defs.get_sensor_def("webhook_events")
    enqueue(postgres_url, "gitea", spec.name, pushed)
    time.sleep(DEBOUNCE_S)  # a collection's deliveries become a run once they have been quiet this long
    with dg.build_sensor_context(resources={"events": res["events"]}, definitions=defs) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.job_name == f"ingest_{spec.name}"
    paths = request.run_config["ops"][f"{spec.name}__raw_documents"]["config"]["paths"]
    assert sorted(paths) == sorted(pushed)

    report = run(spec, res, paths)
    assert report["documents"] == 3 and report["deleted"] == 0
    assert 3 <= report["embedded"] <= 6  # the last chunk of each pushed file, nothing from kafka_consumer.py
    full = run(spec, res)
    assert full["embedded"] >= 1 and full["skipped_unchanged"] == 9  # the unannounced change is caught by the full run


def test_git_source_reads_files_at_a_ref_with_commit_metadata(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)

    def git(*args: str) -> str:
        env_args = ["-c", "user.name=Dev", "-c", "user.email=dev@example.com"]
        return subprocess.run(
            ["git", "-C", str(repo), *env_args, *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "src" / "a.py").write_text("def a():\n    return 1\n")
    git("add", "-A")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    (repo / "src" / "b.py").write_text("def b():\n    return 2\n")
    git("add", "-A")
    git("commit", "-qm", "second")

    head = {d.doc_id: d for d in GitSource(repo, "main", "src").documents(1_000_000)}
    assert set(head) == {"a.py", "b.py"}
    assert head["a.py"].metadata["commit"] == first and head["b.py"].metadata["commit"] != first
    assert head["a.py"].metadata["author"] == "Dev"
    assert {d.doc_id for d in GitSource(repo, first, "src").documents(1_000_000)} == {"a.py"}


@pytest.mark.parametrize("backend", ["qdrant"])
def test_ingest_works_on_qdrant_local_mode_without_postgres(
    backend: str, sample_specs: list[CollectionSpec], sample_copy: Path, tmp_path: Path
) -> None:
    spec = collection(sample_specs, "incidents", sample_copy / "incidents")
    res = resources("unused", tmp_path / "data")
    res["index"] = IndexResource(qdrant_path=str(tmp_path / "qdrant"))
    res["storage"] = StorageResource(data_dir=str(tmp_path / "data"))  # no database: quarantine is reported, not kept
    first = run(spec, res)
    assert first["documents"] == 10 and first["embedded"] == first["chunks"] > 0
    assert run(spec, res)["embedded"] == 0
