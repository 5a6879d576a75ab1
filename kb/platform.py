"""The embedded platform: PostgreSQL, the Dagster instance's environment, code server, webserver and daemon.

`kb up` claims a data directory: it records every process it starts as `<data dir>/run/<name>.pid`, so the
next `kb up` after a crash (kill -9) stops what the dead one left behind instead of failing on held ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psutil
import psycopg

from kb.postgres import EmbeddedPostgres
from kb.settings import PROJECT_ROOT, IndexSettings, PlatformSettings, PostgresSettings

if TYPE_CHECKING:
    import dagster as dg

DAGSTER_HOME = PROJECT_ROOT / "dagster_home"
# The name workspace.yaml's `python_module` entry gets: run history and schedule state stay with the location.
CODE_LOCATION = "pipelines.definitions"
STOP_GRACE_S = 20.0


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


class PlatformError(RuntimeError):
    """The platform cannot start or keep running as asked (another `kb up`, a held port, a component that exited)."""


@dataclass(frozen=True)
class PidRecord:
    """A process `kb up` started, as `<data dir>/run/<name>.pid` records it; the start time tells a reused pid apart."""

    name: str
    pid: int
    started: float
    port: int | None = None

    @classmethod
    def of(cls, name: str, pid: int, port: int | None = None) -> PidRecord:
        return cls(name, pid, psutil.Process(pid).create_time(), port)

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / f".{self.name}.pid.partial"
        partial.write_text(json.dumps(asdict(self)) + "\n")
        partial.replace(run_dir / f"{self.name}.pid")  # never a half-written record after a crash

    def remove(self, run_dir: Path) -> None:
        (run_dir / f"{self.name}.pid").unlink(missing_ok=True)

    @classmethod
    def read_all(cls, run_dir: Path) -> list[PidRecord]:
        records = []
        for path in sorted(run_dir.glob("*.pid")):
            try:
                records.append(cls(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                path.unlink(missing_ok=True)  # not one of ours, or torn: nothing it names can be trusted
        return records

    def alive(self) -> bool:
        """The recorded process itself still runs (not a later process that got the same pid)."""
        try:
            process = psutil.Process(self.pid)
            return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - self.started) < 1
        except psutil.Error:
            return False

    def leftover(self) -> bool:
        """Its process or its process group may still run: it is alive, or its pid is free (the group id it left)."""
        return self.alive() or not psutil.pid_exists(self.pid)


def _live(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _live(process):
                members.append(process)
        except (OSError, psutil.Error):
            pass
    return members


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_process_trees(leaders: Sequence[int], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to each leader's process group and descendants, in the order given; SIGKILL to whatever of them
    is left after `grace` seconds. Each leader was started in its own session, so its pid is its group id."""
    # Descendants are collected before anything stops: once a parent exits, init adopts its children.
    known = {leader: _descendants(leader) for leader in leaders}

    def left(leader: int) -> list[psutil.Process]:
        return _group(leader) + [p for p in known[leader] if _live(p)]

    for leader in leaders:
        _signal(left(leader), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(left(leader) for leader in leaders) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leader in leaders:
        _signal(left(leader), signal.SIGKILL)


def _signal(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def ensure_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Refuse to start on a port another process listens on; `ports` maps the setting that chose it to the port."""
    import socket

    for setting, port in ports.items():
        with socket.socket() as sock:
            # SO_REUSEADDR as the servers themselves bind: a port in TIME_WAIT is free, a listening one is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                continue
            except OSError:
                pass
        raise PlatformError(f"port {port} ({setting}) is in use by {_listener(port)}, which this kb up did not start: "
                            f"stop it or choose another port with {setting}")  # fmt: skip


def _listener(port: int) -> str:
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({' '.join(psutil.Process(conn.pid).cmdline())[:120]})"
    except psutil.Error:
        pass
    return "another process"


def fail_abandoned_runs(instance: dg.DagsterInstance, tags: dict[str, str] | None = None) -> list[str]:
    """Mark runs that a killed process left in progress as failed (canceled when a cancel was asked for); returns
    their ids. A run is abandoned when the process that wrote its last event is gone, so a `kb ingest` still
    running next to `kb up` keeps its run. `tags` narrows it to runs that carry them (a pid means something only
    on the host that wrote it)."""
    from dagster import DagsterRunStatus, RunsFilter

    in_progress = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=in_progress, tags=tags or {})):
        worker = _last_worker(instance, run.run_id)
        if worker is not None and _ran_since(*worker):
            continue
        message = "the process running this run is gone (the platform was killed); marked by the next kb up"
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=message)
        else:
            instance.report_run_failed(run, message=message)
        failed.append(run.run_id)
    return failed


def _last_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, timestamp) of the newest event of the run that names the process that wrote it."""
    for record in instance.get_records_for_run(run_id, ascending=False, limit=50).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return event.pid, record.event_log_entry.timestamp
    return None


def _ran_since(pid: int, timestamp: float) -> bool:
    try:
        process = psutil.Process(pid)
        return _live(process) and process.create_time() <= timestamp + 1
    except psutil.Error:
        return False


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    record: PidRecord | None


@dataclass
class Platform:
    """Starts what the settings ask for and stops, in reverse order, only what it started."""

    platform: PlatformSettings
    postgres: PostgresSettings
    index: IndexSettings
    stop_grace_s: float = STOP_GRACE_S
    _started_postgres: bool = False
    _records: dict[str, PidRecord] = field(default_factory=dict)  # of `up` and `postgres`, once claimed
    _lock: IO[bytes] | None = None
    _children: list[_Child] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """Pid files and the generated Dagster workspace of the `kb up` on this data directory."""
        return self.platform.data_dir / "run"

    def claim(self) -> list[str]:
        """Make this process the data directory's `kb up`: refuse while another one runs, stop what a killed one
        left running (its children's process groups, its PostgreSQL); returns the names of what was stopped."""
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A lock the kernel drops when its holder dies, even by kill -9: two `kb up` started at once cannot both pass.
        lock = (self.run_dir / "up.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            holder = next((f" (pid {r.pid})" for r in PidRecord.read_all(self.run_dir) if r.name == "up"), "")
            raise PlatformError(f"kb up is already running on {self.platform.data_dir}{holder}; stop it first") from None
        self._lock = lock
        records = {r.name: r for r in PidRecord.read_all(self.run_dir) if r.name != "up"}  # an "up" here is dead
        postgres = records.pop("postgres", None)
        stale = [r for r in records.values() if r.leftover()]
        stopped = [r.name for r in stale if r.alive() or _group(r.pid)]
        stop_process_trees([r.pid for r in stale], grace=self.stop_grace_s)
        for record in records.values():
            record.remove(self.run_dir)
        if postgres is not None:
            server = embedded_postgres(self.platform)
            if server.postmaster_pid() == postgres.pid:
                server.stop()  # a fresh start applies this run's port and options
                stopped.append("postgres")
            postgres.remove(self.run_dir)
        self._records["up"] = PidRecord.of("up", os.getpid())
        self._records["up"].write(self.run_dir)
        return stopped

    def start_postgres(self) -> str | None:
        """Start the embedded server unless an external DATABASE_URL is set; return the kb database URL."""
        if self.postgres.database_url:
            return self.postgres.database_url
        server = embedded_postgres(self.platform)
        self._started_postgres = not server.is_running()
        if self._started_postgres:
            ensure_ports_free(self.platform.host, {"KB_POSTGRES_PORT": self.platform.postgres_port})
        url = server.start()
        pid = server.postmaster_pid()
        if self._started_postgres and "up" in self._records and pid is not None:
            self._records["postgres"] = PidRecord.of("postgres", pid, self.platform.postgres_port)
            self._records["postgres"].write(self.run_dir)
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone():
                conn.execute("CREATE DATABASE dagster")
        return url

    def apply_environment(self) -> None:
        os.environ.update(dagster_environment(self.platform, self.postgres))

    def start_dagster(self, log_dir: Path) -> None:
        """One long-lived code server for the definitions, then the webserver and daemon, pointed at it by a
        generated workspace file: with workspace.yaml's `python_module` each of them starts code servers of its
        own, the daemon a new `dagster api grpc` process about every minute."""
        bin_dir = Path(sys.executable).parent
        port = free_port()
        code_server = [str(bin_dir / "dagster"), "code-server", "start", "-m", "pipelines.definitions", "-a", "defs",
                       "--location-name", CODE_LOCATION, "-h", self.platform.host, "-p", str(port),
                       "--use-python-environment-entry-point"]  # fmt: skip
        self.start_process("dagster-code-server", code_server, log_dir, port=port)
        self.wait_for_code_server(port)
        workspace = self.write_workspace(port)
        self.start_process("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-h", self.platform.host,
                                                 "-p", str(self.platform.dagster_port), "-w", str(workspace)], log_dir,
                           port=self.platform.dagster_port)  # fmt: skip
        self.start_process("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], log_dir)

    def write_workspace(self, code_server_port: int) -> Path:
        """The Dagster workspace of this run: the code server on loopback (workspace.yaml stays for `dagster dev`)."""
        import yaml

        entry = {"host": self.platform.host, "port": code_server_port, "location_name": CODE_LOCATION}
        path = self.run_dir / "workspace.yaml"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": entry}]}))
        return path

    def wait_for_code_server(self, port: int, timeout: float = 300) -> None:
        """The code server answers once it has loaded the definitions."""
        from dagster._grpc.client import DagsterGrpcClient  # what `dagster api grpc-health-check` uses

        client = DagsterGrpcClient(port=port, host=self.platform.host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_if_exited("the Dagster code server")
            try:
                client.ping("")
                return
            except Exception:  # grpc raises its own error types while the server is not up yet
                time.sleep(1)
        raise TimeoutError(f"the Dagster code server did not answer on port {port} within {timeout:.0f}s")

    def start_process(
        self, name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        """A server process of the platform, logging to `<log_dir>/<name>.log`, stopped with the platform;
        `env` adds to (or overrides) the environment it inherits. It runs in a session of its own, so stopping
        it reaches its whole process group, and a claimed data directory records it for the next `kb up`."""
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **dagster_environment(self.platform, self.postgres), **(env or {})}
        log = log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        record = None
        if "up" in self._records:
            try:
                record = PidRecord.of(name, process.pid, port)
                record.write(self.run_dir)
            except psutil.NoSuchProcess:  # exited at once: nothing to find later, and watching reports it
                pass
        self._children.append(_Child(name, process, log, record))

    def start_llm(self, model_path: Path, alias: str, port: int, context_window: int, threads: int, log_dir: Path,
                  parallel: int = 2) -> str:  # fmt: skip
        """The embedded llama.cpp server (xllamacpp) on loopback with `parallel` slots; returns its OpenAI base URL."""
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
                "--parallel",
                str(parallel),
            ],
            log_dir,
            port=port,
        )
        return f"http://{self.platform.host}:{port}/v1"

    def start_replays(self, replays: list[tuple[str, str]], log_dir: Path) -> None:
        """Serve recorded systems (connectors.yaml `replay` keys) on their loopback URLs."""
        from urllib.parse import urlsplit

        for url, folder in replays:
            parts = urlsplit(url)
            if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
                raise ValueError(f"a replayed system must have a loopback URL with a port, not {url}")
            ensure_ports_free(self.platform.host, {f"the connectors.yaml URL {url}": parts.port})
            root = (PROJECT_ROOT / folder).resolve()
            self.start_process(f"replay-{root.name}", [sys.executable, "-m", "kb.replay.server", root.name, str(root),
                                                       str(parts.port)], log_dir, port=parts.port)  # fmt: skip

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
            port=port,
        )
        return f"http://{self.platform.host}:{port}"

    def wait_for(self, url: str, what: str, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._raise_if_exited(what)
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f}s")

    def wait_for_webserver(self, timeout: float = 180) -> None:
        self.wait_for(f"http://{self.platform.host}:{self.platform.dagster_port}/server_info", "the Dagster webserver", timeout)

    def watch(self, interval: float = 1) -> None:
        """Wait while every component runs; raise PlatformError when one exits (a signal interrupts the wait)."""
        while True:
            self._raise_if_exited("the platform")
            time.sleep(interval)

    def _raise_if_exited(self, what: str) -> None:
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                raise PlatformError(f"{child.name} exited with code {code} while waiting for {what}; see {child.log}")

    def stop(self) -> None:
        """Stop what this platform started: each process group is sent SIGTERM newest first and all are waited
        for together (one grace period, then SIGKILL); then the embedded PostgreSQL it started (fast shutdown)."""
        stop_process_trees([c.process.pid for c in reversed(self._children)], grace=self.stop_grace_s)
        for child in self._children:
            child.process.wait()  # reaped, so no zombie outlives `kb up`
            if child.record is not None:
                child.record.remove(self.run_dir)
        self._children.clear()
        if self._started_postgres:
            embedded_postgres(self.platform).stop()
            self._started_postgres = False
        for record in (self._records.pop("postgres", None), self._records.pop("up", None)):
            if record is not None:
                record.remove(self.run_dir)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
