"""The embedded platform: PostgreSQL, the Dagster instance's environment, webserver and daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from kb.postgres import EmbeddedPostgres
from kb.settings import PROJECT_ROOT, IndexSettings, PlatformSettings, PostgresSettings

DAGSTER_HOME = PROJECT_ROOT / "dagster_home"


def free_port() -> int:
    """A free TCP port on loopback (for private servers in benchmarks, evals and tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_postgres(platform: PlatformSettings) -> EmbeddedPostgres:
    return EmbeddedPostgres(platform.data_dir / "postgres", platform.host, platform.postgres_port)


def dagster_database_url(platform: PlatformSettings, postgres: PostgresSettings) -> str:
    """Dagster's storage: a `dagster` database next to `kb` on the embedded server, else DATABASE_URL."""
    if postgres.database_url:
        url = postgres.database_url
    else:
        url = f"postgresql://postgres@{platform.host}:{platform.postgres_port}/dagster"
    # dagster-postgres with SQLAlchemy 2.x needs the driver named in the scheme.
    return url.replace("postgresql://", "postgresql+psycopg2://", 1).replace("postgres://", "postgresql+psycopg2://", 1)


def dagster_environment(platform: PlatformSettings, postgres: PostgresSettings) -> dict[str, str]:
    storage = platform.data_dir / "dagster"
    return {
        "DAGSTER_HOME": str(DAGSTER_HOME),
        "KB_DAGSTER_PG_URL": dagster_database_url(platform, postgres),
        "KB_DAGSTER_STORAGE_DIR": str(storage / "storage"),
        "KB_DAGSTER_COMPUTE_LOGS_DIR": str(storage / "logs"),
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "TQDM_DISABLE": "1",
    }


@dataclass
class Platform:
    """Starts what the settings ask for and stops, in reverse order, only what it started."""

    platform: PlatformSettings
    postgres: PostgresSettings
    index: IndexSettings
    _started_postgres: bool = False
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_postgres(self) -> str | None:
        """Start the embedded server unless an external DATABASE_URL is set; return the kb database URL."""
        if self.postgres.database_url:
            return self.postgres.database_url
        server = embedded_postgres(self.platform)
        self._started_postgres = not server.is_running()
        url = server.start()
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone():
                conn.execute("CREATE DATABASE dagster")
        return url

    def apply_environment(self) -> None:
        os.environ.update(dagster_environment(self.platform, self.postgres))

    def start_dagster(self, log_dir: Path) -> None:
        """Webserver and daemon on loopback, each logging to a file under the data directory."""
        bin_dir = Path(sys.executable).parent
        workspace = str(PROJECT_ROOT / "workspace.yaml")
        self.start_process("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-h", self.platform.host,
                                                 "-p", str(self.platform.dagster_port), "-w", workspace], log_dir)  # fmt: skip
        self.start_process("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", workspace], log_dir)

    def start_process(self, name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        """A server process of the platform, logging to `<log_dir>/<name>.log`, stopped with the platform;
        `env` adds to (or overrides) the environment it inherits."""
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **dagster_environment(self.platform, self.postgres), **(env or {})}
        log = (log_dir / f"{name}.log").open("ab")
        self._processes.append(
            subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def start_llm(self, model_path: Path, alias: str, port: int, context_window: int, threads: int, log_dir: Path) -> str:
        """The embedded llama.cpp server (xllamacpp) on loopback; returns its OpenAI base URL."""
        self.start_process(
            "llm",
            [
                sys.executable,
                "-m",
                "kb.llm_server",
                "--model",
                str(model_path),
                "--host",
                self.platform.host,
                "--port",
                str(port),
                "--alias",
                alias,
                "--ctx",
                str(context_window),
                "--threads",
                str(threads),
            ],
            log_dir,
        )
        return f"http://{self.platform.host}:{port}/v1"

    def start_replays(self, replays: list[tuple[str, str]], log_dir: Path) -> None:
        """Serve recorded systems (connectors.yaml `replay` keys) on their loopback URLs."""
        from urllib.parse import urlsplit

        for url, folder in replays:
            parts = urlsplit(url)
            if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
                raise ValueError(f"a replayed system must have a loopback URL with a port, not {url}")
            root = (PROJECT_ROOT / folder).resolve()
            self.start_process(f"replay-{root.name}", [sys.executable, "-m", "kb.replay.server", root.name, str(root),
                                                       str(parts.port)], log_dir)  # fmt: skip

    def start_api(self, port: int, log_dir: Path, env: dict[str, str] | None = None) -> str:
        self.start_process(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                self.platform.host,
                "--port",
                str(port),
                "--no-access-log",
            ],
            log_dir,
            env,
        )
        return f"http://{self.platform.host}:{port}"

    def wait_for(self, url: str, what: str, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._processes):
                raise RuntimeError(f"a platform process exited while waiting for {what}; see the logs under the data directory")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f}s")

    def wait_for_webserver(self, timeout: float = 180) -> None:
        self.wait_for(f"http://{self.platform.host}:{self.platform.dagster_port}/server_info", "the Dagster webserver", timeout)

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self._processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self._processes.clear()
        if self._started_postgres:
            embedded_postgres(self.platform).stop()
            self._started_postgres = False
