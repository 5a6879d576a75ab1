"""Backups that restore: a platform with sessions, audit rows, Dagster runs, a webhook queue and an index is backed
up, its data directory destroyed, restored, and found the same. It runs an embedded PostgreSQL of its own (a
restore replaces the cluster, so the shared session server cannot serve)."""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import psycopg
import pytest
import typer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from api.metrics import register_backup_collector
from assets.chunk import chunk_id
from assets.collections import CollectionSpec
from assets.index import IndexPoint, PgVectorIndex, QdrantIndex
from assets.sparse import bm25_document_vector
from kb.access.audit import AuditLog, audit_key
from kb.backup_cli import backup_command, restore_command
from kb.events import enqueue
from kb.ingest import ingest_collections
from kb.ops.backup import BackupError, create_backup, restore_backup
from kb.platform import DAGSTER_HOME, Platform, dagster_environment, free_port
from kb.postgres import EmbeddedPostgres
from kb.settings import IndexSettings, PlatformSettings, PostgresSettings
from pipelines.backup import build_backup_defs
from pipelines.resources import IndexResource, _open_index
from query_engine.engine import AnswerEngine
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import SAMPLES
from tests.integration.test_pipeline import collection, resources

QUESTION = "How do I fix Kafka consumer lag?"
PASSPHRASE = "correct horse battery staple"


@dataclass
class Source:
    """The platform that was backed up, the two archives, and what it held when they were written."""

    platform: PlatformSettings
    spec: CollectionSpec
    plain: Path
    encrypted: Path
    before: dict[str, Any]
    chunks: int
    dagster_runs: int


def settings(data_dir: Path, port: int, qdrant_path: Path | None = None) -> tuple[PlatformSettings, PostgresSettings,
                                                                                   IndexSettings]:  # fmt: skip
    return (PlatformSettings(data_dir=data_dir, postgres_port=port), PostgresSettings.model_validate({"DATABASE_URL": None}),
            IndexSettings.model_validate({"QDRANT_URL": None, "QDRANT_PATH": qdrant_path}))  # fmt: skip


def cli() -> typer.Typer:
    """The two commands as kb/cli.py registers them."""
    app = typer.Typer()
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
    return app


def cli_env(monkeypatch: pytest.MonkeyPatch, platform: PlatformSettings, passphrase: str | None = None) -> None:
    monkeypatch.setenv("KB_DATA_DIR", str(platform.data_dir))
    monkeypatch.setenv("KB_POSTGRES_PORT", str(platform.postgres_port))
    for name in ("DATABASE_URL", "QDRANT_URL", "QDRANT_PATH", "KB_AUTH_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    if passphrase:
        monkeypatch.setenv("KB_BACKUP_PASSPHRASE", passphrase)
    else:
        monkeypatch.delenv("KB_BACKUP_PASSPHRASE", raising=False)


def close_index(url: str) -> None:
    """The pipeline's index client is cached per URL; a restarted server needs a new one."""
    IndexResource(database_url=url).get().close()
    _open_index.cache_clear()


def state(url: str, spec: CollectionSpec, embedder: Any, data_dir: Path) -> dict[str, Any]:
    """Everything a restore must bring back, as comparable values."""
    store = SessionStore(url)
    try:
        sessions = {s["id"]: store.get(s["id"]) for s in store.list(limit=100)}
    finally:
        store.engine.dispose()
    index = PgVectorIndex(url)
    try:
        engine = AnswerEngine(index, embedder, [spec.name], EvidenceReranker(), None)
        sources = [s.doc_id for s in engine.retrieve(QUESTION).sources]
        chunks = index.count(spec.name)
    finally:
        index.close()
    with AuditLog(url, audit_key(data_dir, None, create=False), pool_size=1) as log:
        verified = log.verify()
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT source, collection, doc_ids FROM kb_webhook_events ORDER BY id").fetchall()
    return {"sessions": sessions, "sources": sources, "chunks": chunks, "events": events,
            "audit": (verified.ok, verified.rows, verified.last_seq, verified.last_mac)}  # fmt: skip


def dagster_runs(platform: PlatformSettings) -> int:
    with psycopg.connect(f"postgresql://postgres@{platform.host}:{platform.postgres_port}/dagster") as conn:
        row = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, sample_specs: list[CollectionSpec], embedder: Any) -> Iterator[Source]:
    root = tmp_path_factory.mktemp("backup")
    shutil.copytree(SAMPLES / "runbooks", root / "runbooks")
    platform, postgres, index = settings(root / "data", free_port())
    spec = collection(sample_specs, "runbooks", root / "runbooks")
    runtime = Platform(platform, postgres, index)
    with pytest.MonkeyPatch.context() as env:
        url = runtime.start_postgres()  # the kb and dagster databases, as `kb up` makes them
        migrate(url)
        for name, value in {**dagster_environment(platform, postgres), "DAGSTER_HOME": str(DAGSTER_HOME)}.items():
            env.setenv(name, value)
        instance = dg.DagsterInstance.from_config(str(DAGSTER_HOME))  # run history in the platform's dagster database
        try:
            report = ingest_collections([spec], resources(url, platform.data_dir), instance)[spec.name]
        finally:
            instance.dispose()
        assert report["ok"] and report["embedded"] == report["chunks"] > 0, report
        _sessions_audit_and_events(url, platform, spec)
        before = state(url, spec, embedder, platform.data_dir)
        assert (
            before["sources"] and before["audit"][:2] == (True, 3) and len(before["events"]) == 1 and len(before["sessions"]) == 2
        )
        runs = dagster_runs(platform)
        close_index(url)
        # Plain, through the CLI, while the server runs; encrypted, through the library, with the server stopped.
        cli_env(env, platform)
        written = CliRunner().invoke(cli(), ["backup", "--output", str(root / "archives"), "--json"])
        assert written.exit_code == 0, written.output
        plain = Path(json.loads(written.stdout)["archive"])
        runtime.stop()
        encrypted = create_backup(platform, postgres, index, root / "archives", PASSPHRASE).archive
        # Written after both backups: a restore over this data directory must drop it.
        url = runtime.start_postgres()
        store = SessionStore(url)
        store.create("eve", "written after the backup", "m")
        store.engine.dispose()
        runtime.stop()
    yield Source(platform, spec, plain, encrypted, before, report["chunks"], runs)


def _sessions_audit_and_events(url: str, platform: PlatformSettings, spec: CollectionSpec) -> None:
    store = SessionStore(url)
    for user, title in (("ada", "Kafka lag"), ("bob", "Redis failover")):
        session = store.create(user, title, "qwen2.5-coder-1.5b-instruct")
        store.add(session, "user", f"{title}: what do I do?")
        store.add(session, "assistant", "Follow the runbook [1].", sources=[{"doc_id": "kafka-consumer-lag.md", "n": 1}],
                  prompt_tokens=120, completion_tokens=12)  # fmt: skip
    store.engine.dispose()
    with AuditLog(url, audit_key(platform.data_dir, None), pool_size=1) as log:
        for n in range(3):
            log.record("ada", "query", target=spec.name, detail={"n": n})
    enqueue(url, "gitea", spec.name, ["kafka-consumer-lag.md"])


def test_plain_backup_restores_a_destroyed_data_dir_with_the_same_sessions_index_and_sources(
    source: Source, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform, postgres, index = settings(source.platform.data_dir, source.platform.postgres_port)
    shutil.rmtree(platform.data_dir)
    result = restore_backup(source.plain, platform, postgres, index, None, force=False)
    assert result.index == {source.spec.name: source.chunks} and result.rows["kb_sessions"] == 2
    assert result.warnings == []
    runtime = Platform(platform, postgres, index)
    url = runtime.start_postgres()
    try:
        assert state(url, source.spec, embedder, platform.data_dir) == source.before
        assert dagster_runs(platform) == source.dagster_runs > 0
        cli_env(monkeypatch, platform)
        from kb.cli import app

        verified = CliRunner().invoke(app, ["audit", "verify", "--json"])
        assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True, verified.output
        again = ingest_collections([source.spec], resources(url, platform.data_dir), dg.DagsterInstance.ephemeral())
        report = again[source.spec.name]
        assert report["ok"] and report["embedded"] == 0 and report["skipped_unchanged"] == report["documents"] > 0, report
    finally:
        close_index(url)
        runtime.stop()


def test_encrypted_backup_restores_over_a_used_data_dir_with_force(
    source: Source, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert b"kb_sessions" in source.plain.read_bytes()
    assert source.encrypted.name.endswith(".tar.enc") and b"kb_sessions" not in source.encrypted.read_bytes()
    cli_env(monkeypatch, source.platform, PASSPHRASE)
    restored = CliRunner().invoke(cli(), ["restore", str(source.encrypted), "--force", "--json"])
    assert restored.exit_code == 0, restored.output
    report = json.loads(restored.stdout)
    assert report["restored"] == str(source.encrypted) and report["data_dir"] == str(source.platform.data_dir)
    assert report["rows"]["kb_sessions"] == 2 and report["rows"]["kb_audit"] == 3 and report["seconds"] >= 0
    platform, postgres, index = settings(source.platform.data_dir, source.platform.postgres_port)
    runtime = Platform(platform, postgres, index)
    url = runtime.start_postgres()
    try:
        after = state(url, source.spec, embedder, platform.data_dir)
        assert after == source.before  # the session written after the backup is gone
        assert dagster_runs(platform) == source.dagster_runs
    finally:
        runtime.stop()


def _fingerprint(data_dir: Path) -> dict[str, bytes]:
    """The files a restore would replace, by content."""
    files = {name: (data_dir / name).read_bytes() for name in ("audit.key", "postgres/global/pg_control")}
    return files | {"listing": "\n".join(sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))).encode()}


def _flip(archive: Path, target: Path, member: str | None) -> Path:
    """A copy with one byte flipped: in the middle of `member`'s data, or of the whole file."""
    data = bytearray(archive.read_bytes())
    if member is None:
        offset = len(data) // 2
    else:
        with tarfile.open(archive) as tar:
            info = tar.getmember(member)
            offset = info.offset_data + info.size // 2
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong passphrase", "wrong passphrase"),
        ("no passphrase", "is encrypted: set KB_BACKUP_PASSPHRASE"),
        ("flipped byte in an encrypted archive", "altered"),
        ("flipped byte in a database dump", "databases/kb.dump does not match its checksum"),
        ("flipped byte in the manifest", "manifest does not match its checksum"),
    ],
)
def test_a_wrong_passphrase_or_a_changed_byte_is_refused_before_anything_changes(
    source: Source, tmp_path: Path, case: str, message: str
) -> None:
    archive, passphrase = source.encrypted, PASSPHRASE
    if case == "wrong passphrase":
        passphrase = "Correct horse battery staple"
    elif case == "no passphrase":
        passphrase = None  # type: ignore[assignment]
    elif case == "flipped byte in an encrypted archive":
        archive = _flip(source.encrypted, tmp_path / source.encrypted.name, None)
    else:
        member = "databases/kb.dump" if "dump" in case else "manifest.json"
        archive, passphrase = _flip(source.plain, tmp_path / source.plain.name, member), None  # type: ignore[assignment]
    platform, postgres, index = settings(source.platform.data_dir, source.platform.postgres_port)
    before = _fingerprint(platform.data_dir)
    with pytest.raises(BackupError, match="refusing to restore") as refused:
        restore_backup(archive, platform, postgres, index, passphrase, force=True)
    assert message in str(refused.value) and PASSPHRASE not in str(refused.value)
    assert _fingerprint(platform.data_dir) == before
    fresh, _, _ = settings(tmp_path / "fresh", free_port())
    with pytest.raises(BackupError, match=message):
        restore_backup(archive, fresh, postgres, index, passphrase, force=False)
    assert not fresh.data_dir.exists()


def test_restore_into_a_non_empty_or_running_data_dir_is_refused(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    platform, postgres, index = settings(source.platform.data_dir, source.platform.postgres_port)
    before = _fingerprint(platform.data_dir)
    cli_env(monkeypatch, platform)
    refused = CliRunner().invoke(cli(), ["restore", str(source.plain), "--json"])
    assert refused.exit_code == 1 and "is not empty" in refused.output and "--force" in refused.output
    assert _fingerprint(platform.data_dir) == before
    runtime = Platform(platform, postgres, index)
    runtime.start_postgres()
    try:
        with pytest.raises(BackupError, match="stop the platform"):
            restore_backup(source.plain, platform, postgres, index, None, force=True)
    finally:
        runtime.stop()
    assert (platform.data_dir / "postgres/PG_VERSION").exists() and (platform.data_dir / "audit.key").read_bytes() == before[
        "audit.key"
    ]


def test_the_daily_job_keeps_the_newest_archives_and_the_metric_reports_its_success(source: Source) -> None:
    platform, postgres, index = settings(source.platform.data_dir, source.platform.postgres_port)
    folder = platform.data_dir / "backups"
    folder.mkdir(exist_ok=True)
    old = ["kb-backup-20200101T023000Z.tar", "kb-backup-20200102T023000Z.tar.enc", "kb-backup-20200103T023000Z.tar"]
    for name in [*old, "notes.txt"]:
        (folder / name).write_bytes(b"older")
    result = (
        build_backup_defs(platform, postgres, index, keep=2)
        .get_job_def("backup")
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    assert result.success
    written = result.output_for_node("backup_platform")
    assert Path(written["archive"]).parent == folder and written["bytes"] > 0 and written["encrypted"] is False
    assert sorted(p.name for p in folder.iterdir()) == sorted([Path(written["archive"]).name, old[-1], "notes.txt"])
    assert not EmbeddedPostgres(
        platform.data_dir / "postgres", port=platform.postgres_port
    ).is_running()  # started for the job only
    runtime = Platform(platform, postgres, index)
    url = runtime.start_postgres()
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT archive, trigger, extract(epoch FROM finished_at)::float8 FROM kb_backups"
                               " ORDER BY finished_at DESC LIMIT 1").fetchone()  # fmt: skip
        assert row is not None and row[:2] == (written["archive"], "dagster")
        registry = CollectorRegistry()
        register_backup_collector(url, registry)
        assert registry.get_sample_value("kb_backup_last_success_timestamp") == pytest.approx(row[2])
    finally:
        runtime.stop()


def test_the_metric_is_zero_without_backups_and_absent_while_the_database_is_down(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    url = server.start()
    registry = CollectorRegistry()
    try:
        migrate(url)
        register_backup_collector(url, registry)
        assert registry.get_sample_value("kb_backup_last_success_timestamp") == 0.0
    finally:
        server.stop()
    assert registry.get_sample_value("kb_backup_last_success_timestamp") is None


def test_a_qdrant_local_index_is_backed_up_and_restored(tmp_path: Path, embedder: Any) -> None:
    platform, postgres, index = settings(tmp_path / "data", free_port(), qdrant_path=tmp_path / "data" / "qdrant")
    server = EmbeddedPostgres(platform.data_dir / "postgres", port=platform.postgres_port)
    server.start()
    server.stop()
    texts = {"kafka.md": "Scale the Kafka consumer group to the partition count.", "redis.md": "Promote a Redis replica."}
    vectors = embedder.embed_passages(list(texts.values()))
    points = [IndexPoint(chunk_id("runbooks", doc, 0), doc, "v1", 0, f"h-{doc}", text, {"path": doc}, vector,
                         bm25_document_vector(text, 10))
              for (doc, text), vector in zip(texts.items(), vectors, strict=True)]  # fmt: skip
    qdrant = QdrantIndex(path=index.qdrant_path)
    qdrant.ensure_collection("runbooks", embedder.dimension)
    qdrant.write("runbooks", points, [])
    qdrant.close()
    archive = create_backup(platform, postgres, index, tmp_path / "archives", None).archive
    shutil.rmtree(platform.data_dir)
    result = restore_backup(archive, platform, postgres, index, None, force=False)
    assert result.index == {"runbooks": 2}
    qdrant = QdrantIndex(path=index.qdrant_path)
    try:
        query = embedder.embed_queries(["kafka consumer lag"])[0]
        assert qdrant.count("runbooks") == 2 and qdrant.dense_search("runbooks", np.asarray(query), 1)[0].doc_id == "kafka.md"
    finally:
        qdrant.close()


def test_an_external_database_is_backed_up_and_restored_into_an_empty_one(postgres_url: str, tmp_path: Path) -> None:
    names = {role: f"bk_{role}_{uuid.uuid4().hex[:8]}" for role in ("src", "dst")}
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'CREATE DATABASE "{name}"')
    src, dst = (postgres_url.rsplit("/", 1)[0] + f"/{names[r]}" for r in ("src", "dst"))
    migrate(src)
    store = SessionStore(src)
    session = store.create("ada", "external", "m")
    store.add(session, "user", "kept across servers")
    expected = store.get(session)
    store.engine.dispose()
    platform = PlatformSettings(data_dir=tmp_path / "data")
    index = IndexSettings.model_validate({"QDRANT_URL": None, "QDRANT_PATH": None})
    archive = create_backup(platform, PostgresSettings.model_validate({"DATABASE_URL": src}), index, tmp_path / "archives", None)
    assert archive.databases == ["kb"]
    result = restore_backup(
        archive.archive, platform, PostgresSettings.model_validate({"DATABASE_URL": dst}), index, None, force=False
    )
    assert result.rows["kb_messages"] == 1
    store = SessionStore(dst)
    try:
        assert store.get(session) == expected
    finally:
        store.engine.dispose()
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(
            archive.archive, platform, PostgresSettings.model_validate({"DATABASE_URL": dst}), index, None, force=False
        )
