"""Backups that restore: everything not derived from sources, in one archive, and back.

What goes in: the `kb` database (sessions, messages, audit log, API keys, webhook queue, and the pgvector
index, so a restore does not re-embed) and the `dagster` database (run history), each dumped by the embedded
server's own `pg_dump` in one snapshot, with its row counts taken in that same snapshot; the audit key file;
Qdrant's collections when Qdrant is the index; and a manifest (quarantine records are a table of the `kb`
database, rebuilt by the next run anyway). Models, git mirrors and logs are derived and stay out.

A restore verifies the whole archive (checksums, manifest, passphrase) in a staging folder before it changes
anything, builds a fresh cluster beside the data directory's and swaps it in only once every table holds the
row count the manifest recorded.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from kb.access.audit import KEY_FILE
from kb.ops.archive import ArchiveError, private_file, read_archive, write_archive
from kb.postgres import EmbeddedPostgres
from kb.settings import EmbeddingSettings, IndexSettings, PlatformSettings, PostgresSettings

_ARCHIVE_NAME = re.compile(r"kb-backup-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar(?:\.enc)?")
# Entries of the data directory a restore neither needs empty nor replaces: the archives themselves, what is
# provisioned or written again (models, logs), and `kb up`'s pid records (run).
NOT_STATE = frozenset({"backups", "logs", "models", "run"})
_WORK_PREFIX = ".kb-restore"  # the restore's own work folders inside the data directory
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}")


class BackupError(RuntimeError):
    """A backup or restore that cannot go ahead; the message says why and never holds a secret."""


class BackupSettings(BaseSettings):
    """The passphrase of encrypted archives and how many the daily job keeps."""

    model_config = SettingsConfigDict(env_prefix="KB_BACKUP_", extra="ignore")

    passphrase: SecretStr | None = Field(default=None, description="Encrypts archives (AES-256-GCM, scrypt); never stored.")
    keep: int = Field(default=7, ge=1, description="Archives the daily job keeps in $KB_DATA_DIR/backups, newest first.")

    def passphrase_text(self) -> str | None:
        return (self.passphrase.get_secret_value() or None) if self.passphrase else None


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    size: int
    encrypted: bool
    databases: list[str]
    rows: dict[str, int]
    seconds: float
    created_at: datetime
    manifest: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"archive": str(self.archive), "bytes": self.size, "encrypted": self.encrypted, "databases": self.databases,
                "rows": self.rows, "seconds": self.seconds, "created_at": _iso(self.created_at),
                "index": self.manifest.get("index", {})}  # fmt: skip


@dataclass(frozen=True)
class RestoreResult:
    restored: Path
    data_dir: Path
    rows: dict[str, int]
    index: dict[str, int]
    seconds: float
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"restored": str(self.restored), "data_dir": str(self.data_dir), "rows": self.rows, "index": self.index,
                "seconds": self.seconds, "warnings": self.warnings}  # fmt: skip


@dataclass(frozen=True)
class _Database:
    name: str  # as the archive names it: "kb" or "dagster"
    url: str


def create_backup(
    platform: PlatformSettings,
    postgres: PostgresSettings,
    index: IndexSettings,
    output_dir: Path,
    passphrase: str | None,
    *,
    embedding: EmbeddingSettings | None = None,
) -> BackupResult:
    """Write `kb-backup-<UTC time>.tar` (`.tar.enc` with a passphrase) into `output_dir`; the embedded server is
    started for the backup when it is not running, and stopped again after."""
    started, created = time.perf_counter(), datetime.now(UTC).replace(microsecond=0)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_id = _embedding_model_id(embedding or EmbeddingSettings())
    with _database_server(platform, postgres), tempfile.TemporaryDirectory(prefix=".kb-backup-", dir=output_dir) as tmp:
        staging = Path(tmp)
        databases = _databases(platform, postgres)
        members, rows, versions = _dump_all(databases, staging)
        key = platform.data_dir / KEY_FILE
        if key.is_file():
            members["audit.key"] = staging / KEY_FILE
            shutil.copyfile(key, members["audit.key"])
        qdrant: dict[str, Any] | None = None
        if index.backend == "qdrant":
            qdrant_members, qdrant = _backup_qdrant(index, staging)
            members.update(qdrant_members)
        manifest = {
            "created_at": _iso(created),
            "databases": [db.name for db in databases],
            "external_database": bool(postgres.database_url),
            "postgres_version": ", ".join(sorted(versions)),
            "pg_dump_version": _tool_version("pg_dump"),
            "rows": rows,
            "index_backend": index.backend,
            "index": _kb_collections(qdrant["collections"]) if qdrant else _pgvector_counts(rows),
            "qdrant": qdrant,
            "embedding_model": model_id,
            "audit_key": "file" if "audit.key" in members else "absent",
        }
        target = _archive_path(output_dir, created, encrypted=bool(passphrase))
        stored = write_archive(target, members, manifest, passphrase, created.timestamp())
    return BackupResult(target, target.stat().st_size, bool(passphrase), [db.name for db in databases], rows,
                        round(time.perf_counter() - started, 2), created, stored)  # fmt: skip


def restore_backup(
    archive: Path,
    platform: PlatformSettings,
    postgres: PostgresSettings,
    index: IndexSettings,
    passphrase: str | None,
    force: bool,
    *,
    embedding: EmbeddingSettings | None = None,
) -> RestoreResult:
    """Bring `archive` back into the configured data directory (or DATABASE_URL), which must be empty unless
    `force`; the platform must be stopped. Nothing changes unless the whole archive verifies."""
    started = time.perf_counter()
    _check_target(platform, postgres, index, force)
    with tempfile.TemporaryDirectory(prefix="kb-restore-") as tmp:
        try:
            manifest, files = read_archive(archive, Path(tmp), passphrase)
        except ArchiveError as error:
            raise BackupError(f"refusing to restore {archive.name}: {error}") from None
        _check_compatible(manifest, index)
        if index.qdrant_url:
            _check_qdrant_server_target(index, manifest, force)
        platform.data_dir.mkdir(parents=True, exist_ok=True)
        if postgres.database_url:
            rows = _restore_external(postgres.database_url, files, manifest, force)
        else:
            rows = _restore_embedded(platform, files, manifest)
        if (files / "audit.key").is_file():
            _put_audit_key(files / "audit.key", platform.data_dir / KEY_FILE)
        restored_index = (
            _kb_collections(_restore_qdrant(index, files, manifest)) if index.backend == "qdrant" else _pgvector_counts(rows)
        )
    warnings = _restore_warnings(manifest, embedding or EmbeddingSettings())
    return RestoreResult(archive, platform.data_dir, rows, restored_index, round(time.perf_counter() - started, 2), warnings)


def prune_backups(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` archives in `directory` (only files named as `kb backup` names them)."""
    if keep < 1:
        raise ValueError("keep at least one archive")
    if not directory.is_dir():
        return []
    archives = sorted((_archive_order(p.name), p) for p in directory.iterdir() if p.is_file() and _ARCHIVE_NAME.fullmatch(p.name))
    removed = [path for _, path in archives[:-keep]]
    for path in removed:
        path.unlink()
    return removed


def record_backup(database_url: str, result: BackupResult, trigger: str) -> None:
    """One row in kb_backups per successful backup (what `kb_backup_last_success_timestamp` reads)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO kb_backups (created_at, finished_at, archive, bytes, encrypted, seconds, trigger)"
            " VALUES (%s, now(), %s, %s, %s, %s, %s)",
            (result.created_at, str(result.archive), result.size, result.encrypted, result.seconds, trigger),
        )


def last_backup_timestamp(database_url: str, timeout_s: int = 2) -> float:
    """Seconds since the epoch of the newest successful backup; 0 when there is none (or no kb_backups yet)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=timeout_s) as conn:
        try:
            row = conn.execute("SELECT extract(epoch FROM max(finished_at))::float8 FROM kb_backups").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0.0
    return float(row[0]) if row and row[0] is not None else 0.0


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def embedded_server(platform: PlatformSettings) -> EmbeddedPostgres:
    from kb.platform import embedded_postgres

    return embedded_postgres(platform)


@contextmanager
def _database_server(platform: PlatformSettings, postgres: PostgresSettings) -> Iterator[None]:
    """The server to back up, running: DATABASE_URL's, or the embedded one, started here if it is stopped."""
    if postgres.database_url:
        yield
        return
    server = embedded_server(platform)
    if not (server.pgdata / "PG_VERSION").exists():
        raise BackupError(f"no platform data in {platform.data_dir}: nothing to back up (KB_DATA_DIR)")
    started_here = not server.is_running()
    try:
        server.start()
        yield
    finally:
        if started_here:
            server.stop()


def _databases(platform: PlatformSettings, postgres: PostgresSettings) -> list[_Database]:
    if postgres.database_url:
        # Dagster's storage is this same database (kb.platform.dagster_database_url): one dump holds both.
        return [_Database("kb", postgres.database_url)]
    url = embedded_server(platform).url
    found = [_Database("kb", url)]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone():
            found.append(_Database("dagster", make_conninfo(url, dbname="dagster")))
    return found


def _dump_all(databases: list[_Database], staging: Path) -> tuple[dict[str, Path], dict[str, int], set[str]]:
    """Each database dumped under `staging`: the archive members, the row counts and the server versions."""
    members: dict[str, Path] = {}
    rows: dict[str, int] = {}
    versions: set[str] = set()
    for db in databases:
        members[f"databases/{db.name}.dump"] = staging / f"{db.name}.dump"
        counted, version = _dump(db, members[f"databases/{db.name}.dump"])
        rows.update(counted)
        versions.add(version)
    return members, rows, versions


def _dump(db: _Database, target: Path) -> tuple[dict[str, int], str]:
    """pg_dump in the snapshot the row counts are taken in, so the manifest's counts are the dump's."""
    with psycopg.connect(db.url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = _scalar(conn, "SELECT pg_export_snapshot()")
        rows = _count_rows(conn, "" if db.name == "kb" else f"{db.name}.")
        _run_tool("pg_dump", ["--format=custom", f"--snapshot={snapshot}", f"--file={target}"], db.url, f"pg_dump of {db.name}")
        version = str(_scalar(conn, "SHOW server_version")).split()[0]
    return rows, version


def _count_rows(conn: psycopg.Connection[Any], prefix: str) -> dict[str, int]:
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
    ).fetchall()
    counts: dict[str, int] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[prefix + (table if schema == "public" else f"{schema}.{table}")] = int(_scalar(conn, query))
    return counts


def _scalar(conn: psycopg.Connection[Any], query: Any) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _run_tool(name: str, args: list[str], url: str, what: str) -> None:
    """One of the embedded server's client programs; the password travels in the environment, not the command line."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    command = [str(POSTGRES_BIN_PATH / name), *args, f"--dbname={make_conninfo('', **params)}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {_tail(result.stderr)}")


def _tool_version(name: str) -> str:
    """`18.6` from `pg_dump (PostgreSQL) 18.6`."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    output = subprocess.run([str(POSTGRES_BIN_PATH / name), "--version"], capture_output=True, text=True, check=True).stdout
    return output.split()[-1]


def _tail(text: str, limit: int = 800) -> str:
    from assets.mask import mask_secrets

    return mask_secrets(text.strip()[-limit:]).text or "no message"


def _check_target(platform: PlatformSettings, postgres: PostgresSettings, index: IndexSettings, force: bool) -> None:
    """Refuse a running platform, and a target holding state unless `force`; changes nothing."""
    occupied: list[str] = []
    if postgres.database_url:
        with psycopg.connect(postgres.database_url, autocommit=True, connect_timeout=10) as conn:
            tables = int(_scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
        if tables:
            occupied.append(f"DATABASE_URL has {tables} tables")
    else:
        server = embedded_server(platform)
        if server.is_running():
            raise BackupError(f"the platform's PostgreSQL is running on {platform.host}:{platform.postgres_port}: "
                              "stop the platform before a restore")  # fmt: skip
    if platform.data_dir.is_dir():
        occupied += sorted(e.name for e in platform.data_dir.iterdir() if e.name not in NOT_STATE
                           and not e.name.startswith(_WORK_PREFIX))  # fmt: skip
    if index.qdrant_path and index.qdrant_path.is_dir() and any(index.qdrant_path.iterdir()):
        occupied.append(f"QDRANT_PATH {index.qdrant_path}")
        if force:
            _open_local_qdrant(index.qdrant_path).close()  # a process holding the folder must stop first
    if occupied and not force:
        raise BackupError(f"the data directory {platform.data_dir} is not empty ({', '.join(dict.fromkeys(occupied))}): "
                          "restore into an empty one, or pass --force to replace it")  # fmt: skip


def _check_compatible(manifest: Mapping[str, Any], index: IndexSettings) -> None:
    """The manifest names what this restore can place where the settings point; raises BackupError otherwise."""
    databases, rows, qdrant = manifest.get("databases"), manifest.get("rows"), manifest.get("qdrant")
    collections = qdrant.get("collections") if isinstance(qdrant, dict) else {}
    names = [*(databases if isinstance(databases, list) else [None]), *(collections if isinstance(collections, dict) else [None])]
    if not databases or not isinstance(rows, dict) or not all(isinstance(n, str) and _SAFE_NAME.fullmatch(n) for n in names):
        raise BackupError(
            "the archive's manifest does not name its databases, row counts or collections as `kb backup` writes them"
        )
    backend = manifest.get("index_backend")
    if backend != index.backend:
        raise BackupError(f"the archive's index is {backend} but the configured index is {index.backend}: "
                          "set (or unset) QDRANT_URL / QDRANT_PATH as they were when the backup ran")  # fmt: skip
    if backend == "qdrant":
        mode, configured = (manifest.get("qdrant") or {}).get("mode"), "path" if index.qdrant_path else "server"
        if mode != configured:
            raise BackupError(f"the archive holds a Qdrant {mode} index but a Qdrant {configured} is configured")
    dumped, ours = str(manifest.get("pg_dump_version", "0")), _tool_version("pg_restore")
    if int(dumped.split(".")[0]) > int(ours.split(".")[0]):
        raise BackupError(f"the archive was dumped by pg_dump {dumped}, newer than this pg_restore {ours}")


def _restore_embedded(platform: PlatformSettings, files: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    """A fresh cluster in a work folder on the configured port, every database restored and counted; then it
    replaces the data directory's cluster."""
    final = embedded_server(platform).pgdata
    building = platform.data_dir / f"{_WORK_PREFIX}-postgres"
    if building.exists():
        shutil.rmtree(building)  # left by an interrupted restore
    server = EmbeddedPostgres(building, platform.host, platform.postgres_port)
    try:
        rows = _restore_into_new_cluster(server, files, manifest)
        _check_rows(rows, manifest["rows"])
    except BaseException:
        server.stop()
        shutil.rmtree(building, ignore_errors=True)
        raise
    server.stop()
    if final.exists():
        shutil.rmtree(final)
    building.rename(final)
    return rows


def _restore_into_new_cluster(server: EmbeddedPostgres, files: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    try:
        url = server.start()
    except subprocess.CalledProcessError:
        log = server.pgdata / "server.log"
        detail = _tail(log.read_text(errors="replace"), 400) if log.exists() else "no server log"
        raise BackupError(f"could not start PostgreSQL on {server.host}:{server.port} for the restore: {detail}") from None
    rows: dict[str, int] = {}
    for name in manifest["databases"]:
        db_url = url if name == "kb" else make_conninfo(url, dbname=name)
        if name != "kb":
            with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        _pg_restore(db_url, files / f"databases/{name}.dump", name, clean=False)
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows.update(_count_rows(conn, "" if name == "kb" else f"{name}."))
    return rows


def _restore_external(url: str, files: Path, manifest: Mapping[str, Any], force: bool) -> dict[str, int]:
    """Into DATABASE_URL, which holds Dagster's tables too: every dump of the archive goes into that one database."""
    for name in manifest["databases"]:
        _pg_restore(url, files / f"databases/{name}.dump", name, clean=force)
    with psycopg.connect(url, autocommit=True) as conn:
        counted = _count_rows(conn, "")
    expected = {_unprefixed(name): n for name, n in manifest["rows"].items()}
    _check_rows(counted, expected)
    return {name: counted[_unprefixed(name)] for name in manifest["rows"]}


def _pg_restore(url: str, dump: Path, name: str, clean: bool) -> None:
    # One transaction per database: a failed restore leaves nothing half done. Owners and grants are not
    # restored: the embedded server has a single superuser, and an external server's roles are its own.
    options = [
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",
        "--no-acl",
        *(["--clean", "--if-exists"] if clean else []),
    ]
    _run_tool("pg_restore", [*options, str(dump)], url, f"pg_restore of {name}")


def _unprefixed(table: str) -> str:
    return table.split(".", 1)[1] if table.startswith("dagster.") else table


def _check_rows(actual: Mapping[str, int], expected: Mapping[str, int]) -> None:
    wrong = [f"{t} ({actual.get(t)} rows, archive {n})" for t, n in sorted(expected.items()) if actual.get(t) != n]
    if wrong:
        raise BackupError(f"restored row counts differ from the archive's: {', '.join(wrong[:10])}")


def _put_audit_key(source: Path, target: Path) -> None:
    staged = target.with_name(f"{_WORK_PREFIX}-{target.name}")
    with private_file(staged) as out:
        out.write(source.read_bytes())
    os.replace(staged, target)


def _pgvector_counts(rows: Mapping[str, int]) -> dict[str, int]:
    """Chunks per collection: the rows of each `kb_chunks_<collection>` table (not its `_df` companion)."""
    prefix = "kb_chunks_"
    return {t.removeprefix(prefix): n for t, n in rows.items()
            if t.startswith(prefix) and not (t.endswith("_df") and t.removesuffix("_df") in rows)}  # fmt: skip


# --- Qdrant -------------------------------------------------------------------------------------------------


def _kb_collections(counts: Mapping[str, int]) -> dict[str, int]:
    """Points per knowledge-base collection. The index versions' own collection (assets/index.py) is backed up and
    restored with them, so that cached results stay keyed to the data they were built from, but is not one."""
    from assets.index import QdrantIndex

    return {name: n for name, n in counts.items() if name != QdrantIndex.VERSIONS}


def _backup_qdrant(index: IndexSettings, staging: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    if index.qdrant_path:
        return _backup_qdrant_folder(index.qdrant_path, staging)
    return _backup_qdrant_server(index, staging)


def _open_local_qdrant(folder: Path) -> Any:
    from qdrant_client import QdrantClient

    try:
        return QdrantClient(path=str(folder))
    except RuntimeError as error:
        raise BackupError(f"{error} Stop the process that uses QDRANT_PATH first.") from None


def _backup_qdrant_folder(folder: Path, staging: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Local mode has no snapshots: the folder itself, copied while this process holds its lock (no writer)."""
    if not folder.is_dir():
        return {}, {"mode": "path", "collections": {}}
    client = _open_local_qdrant(folder)
    packed = staging / "qdrant-local.tar"
    try:
        counts = {c.name: client.count(c.name, exact=True).count for c in client.get_collections().collections}
        with tarfile.open(packed, "w") as tar:
            for entry in sorted(folder.iterdir()):
                if entry.name != ".lock":
                    tar.add(entry, arcname=entry.name)
    finally:
        client.close()
    return {"qdrant/local.tar": packed}, {"mode": "path", "collections": counts}


def _qdrant_server(index: IndexSettings) -> tuple[Any, str, dict[str, str]]:
    from qdrant_client import QdrantClient

    assert index.qdrant_url
    headers = {"api-key": index.qdrant_api_key} if index.qdrant_api_key else {}
    return QdrantClient(url=index.qdrant_url, api_key=index.qdrant_api_key), index.qdrant_url.rstrip("/"), headers


def _backup_qdrant_server(index: IndexSettings, staging: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """A snapshot of each collection, downloaded and then deleted on the server."""
    import httpx

    client, base, headers = _qdrant_server(index)
    members: dict[str, Path] = {}
    counts: dict[str, int] = {}
    try:
        for name in sorted(c.name for c in client.get_collections().collections):
            if not _SAFE_NAME.fullmatch(name):
                raise BackupError(f"Qdrant collection {name!r} has a name this backup cannot store")
            counts[name] = client.count(name, exact=True).count
            snapshot = client.create_snapshot(name, wait=True)
            target = members[f"qdrant/{name}.snapshot"] = staging / f"qdrant-{name}.snapshot"
            try:
                with httpx.stream("GET", f"{base}/collections/{name}/snapshots/{snapshot.name}", headers=headers,
                                  timeout=None) as response, private_file(target) as out:  # fmt: skip
                    response.raise_for_status()
                    for block in response.iter_bytes(1 << 20):
                        out.write(block)
            finally:
                client.delete_snapshot(name, snapshot.name)
    finally:
        client.close()
    return members, {"mode": "server", "collections": counts}


def _check_qdrant_server_target(index: IndexSettings, manifest: Mapping[str, Any], force: bool) -> None:
    client, _, _ = _qdrant_server(index)
    try:
        existing = [name for name in manifest["qdrant"]["collections"] if client.collection_exists(name)]
    finally:
        client.close()
    if existing and not force:
        raise BackupError(f"Qdrant already has collection(s) {', '.join(existing)}: pass --force to replace them")


def _restore_qdrant(index: IndexSettings, files: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    expected: dict[str, int] = dict(manifest["qdrant"]["collections"])
    counts = (
        _restore_qdrant_folder(index.qdrant_path, files) if index.qdrant_path else _restore_qdrant_server(index, files, expected)
    )
    _check_rows(counts, expected)
    return counts


def _restore_qdrant_folder(folder: Path, files: Path) -> dict[str, int]:
    packed = files / "qdrant/local.tar"
    if not packed.is_file():
        return {}
    building = folder.with_name(f"{_WORK_PREFIX}-{folder.name}")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True, mode=0o700)
    with tarfile.open(packed) as tar:
        tar.extractall(building, filter="data")
    client = _open_local_qdrant(building)
    try:
        counts = {c.name: client.count(c.name, exact=True).count for c in client.get_collections().collections}
    finally:
        client.close()
    if folder.exists():
        shutil.rmtree(folder)
    building.rename(folder)
    return counts


def _restore_qdrant_server(index: IndexSettings, files: Path, expected: Mapping[str, int]) -> dict[str, int]:
    import httpx

    client, base, headers = _qdrant_server(index)
    try:
        for name in expected:
            snapshot = files / f"qdrant/{name}.snapshot"
            with snapshot.open("rb") as file:
                response = httpx.post(
                    f"{base}/collections/{name}/snapshots/upload",
                    headers=headers,
                    params={"priority": "snapshot", "wait": "true"},
                    files={"snapshot": (snapshot.name, file)},
                    timeout=None,
                )
            if response.status_code >= 400:
                raise BackupError(
                    f"Qdrant refused the snapshot of {name}: HTTP {response.status_code} {_tail(response.text, 300)}"
                )
        return {name: client.count(name, exact=True).count for name in expected}
    finally:
        client.close()


# --- names, manifest ----------------------------------------------------------------------------------------


def _archive_path(output_dir: Path, created: datetime, encrypted: bool) -> Path:
    stamp, suffix = created.strftime("%Y%m%dT%H%M%SZ"), ".tar.enc" if encrypted else ".tar"
    for n in itertools.count(1):
        path = output_dir / f"kb-backup-{stamp}{'' if n == 1 else f'-{n}'}{suffix}"
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def _archive_order(name: str) -> tuple[str, int, str]:
    match = _ARCHIVE_NAME.fullmatch(name)
    assert match
    return match.group(1), int(match.group(2) or 1), name


def _embedding_model_id(embedding: EmbeddingSettings) -> str:
    from assets.embed import embedder_fingerprint

    try:
        return embedder_fingerprint(embedding.backend, embedding.model_dir, embedding.pooling)
    except OSError:
        return "unknown"


def _restore_warnings(manifest: Mapping[str, Any], embedding: EmbeddingSettings) -> list[str]:
    warnings = []
    if manifest.get("audit_key") != "file":
        warnings.append("the archive has no audit key file: set KB_AUTH_AUDIT_KEY to the key the platform used, "
                        "or `kb audit verify` fails")  # fmt: skip
    configured = _embedding_model_id(embedding)
    if manifest.get("embedding_model") not in (configured, "unknown"):
        warnings.append(f"the index was embedded with {manifest.get('embedding_model')} but {configured} is configured: "
                        "the next ingest re-embeds every document")  # fmt: skip
    return warnings


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
