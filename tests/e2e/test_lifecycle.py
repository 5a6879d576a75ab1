"""`kb up`'s lifecycle as an operator meets it: SIGTERM after ingestion stops everything it started (exit 0), a
crash (kill -9 of `kb up` and its PostgreSQL) is recovered by the next `kb up` without re-embedding, a run left
in progress by a killed process is marked failed, and one long-lived Dagster code server serves the daemon.

Each test starts its own `kb up` (the 0.5B model, free ports, one small collection) in a tmp data dir. A stop
asked for by SIGINT or SIGTERM exits 0."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import pytest
import yaml

from kb.settings import PROJECT_ROOT
from tests.conftest import SAMPLES, free_port
from tests.e2e.conftest import _wait_for_line

pytestmark = pytest.mark.e2e

KB = str(Path(sys.executable).parent / "kb")
UP_TIMEOUT_S = 900  # a loaded two-core machine: provisioning the model, loading the code server, ingesting
STOP_TIMEOUT_S = 90


@dataclass
class Site:
    """A data dir, its ports and the environment `kb up` runs with."""

    root: Path
    env: dict[str, str]

    @property
    def data_dir(self) -> Path:
        return Path(self.env["KB_DATA_DIR"])

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.env['KB_POSTGRES_PORT']}/kb"

    def start(self, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / log_name
        with log.open("wb") as out:
            process = subprocess.Popen([KB, "up"], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return process, log

    def processes(self) -> list[psutil.Process]:
        """Every live process of this platform: each one carries its KB_DATA_DIR (PostgreSQL's too, via pg_ctl)."""
        marker = f"KB_DATA_DIR={self.data_dir}".encode()
        found = []
        for process in psutil.process_iter():
            try:
                environ = Path(f"/proc/{process.pid}/environ").read_bytes()
                if marker in environ.split(b"\0") and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except (OSError, psutil.Error):
                pass
        return found


def _site(root: Path, **overrides: str) -> Site:
    knowledge_base = root / "runbooks"
    knowledge_base.mkdir(parents=True)
    for path in sorted((SAMPLES / "runbooks").glob("*.md"))[:3]:
        shutil.copy(path, knowledge_base)
    config = yaml.safe_load((PROJECT_ROOT / "collections.yaml").read_text())
    runbooks = config["collections"]["runbooks"]
    runbooks["source"]["path"] = str(knowledge_base)
    (root / "collections.yaml").write_text(yaml.safe_dump({"collections": {"runbooks": runbooks}}))
    ports = {name: str(free_port()) for name in ("KB_POSTGRES_PORT", "KB_DAGSTER_PORT", "KB_API_PORT", "KB_LLM_PORT")}
    env = {
        **os.environ, **ports,
        "KB_DATA_DIR": str(root / "data"), "KB_COLLECTIONS_FILE": str(root / "collections.yaml"),
        "KB_CONNECTORS_FILE": str(root / "no-connectors.yaml"),  # docs only: no recorded systems to serve
        "KB_LLM_MODEL": "qwen2.5-coder-0.5b-instruct", "KB_LLM_CONTEXT_WINDOW": "2048",
        **overrides,
    }  # fmt: skip
    return Site(root, env)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One data dir for the module's platform tests; whatever a failed test left running is killed at the end."""
    site = _site(tmp_path_factory.mktemp("lifecycle"))
    yield site
    for process in site.processes():
        process.kill()


def _stop(process: subprocess.Popen[bytes], log: Path, signum: int) -> int:
    """Signal `kb up` itself (not its group: it must stop its children on its own) and wait for it."""
    os.kill(process.pid, signum)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kb up did not stop within {STOP_TIMEOUT_S}s of {signal.Signals(signum).name}:\n" + log.read_text()[-3000:])


def _assert_nothing_left(site: Site, recorded: dict[str, int], process: subprocess.Popen[bytes]) -> None:
    left = [" ".join(p.cmdline())[:100] for p in site.processes()]
    assert left == [], f"processes of the platform still run after it stopped: {left}"
    assert not [pid for pid in recorded.values() if psutil.pid_exists(pid) and _is_platform_process(site, pid)]
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # kb up's own process group is empty
    assert not (site.data_dir / "postgres" / "postmaster.pid").exists(), "PostgreSQL was not shut down"
    assert not list((site.data_dir / "run").glob("*.pid")), "pid files of a stopped platform remain"


def _is_platform_process(site: Site, pid: int) -> bool:
    return any(p.pid == pid for p in site.processes())


def _recorded_pids(site: Site) -> dict[str, int]:
    """What `kb up` recorded under <data dir>/run/: one pid file per process it started."""
    import json

    return {path.stem: json.loads(path.read_text())["pid"] for path in (site.data_dir / "run").glob("*.pid")}


def _report_numbers(log: Path, field: str) -> list[int]:
    return [int(n) for n in re.findall(rf'"{field}": (\d+)', log.read_text(errors="replace"))]


def _chunks(site: Site) -> int:
    with psycopg.connect(site.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM kb_chunks_runbooks").fetchone()
    assert row is not None
    return int(row[0])


def _code_server_processes(site: Site) -> dict[int, str]:
    return {
        p.pid: " ".join(p.cmdline())
        for p in site.processes()
        if "code-server" in p.cmdline() or ("api" in p.cmdline() and "grpc" in p.cmdline())
    }


def test_kb_up_stops_everything_it_started_on_sigterm_after_ingestion(site: Site) -> None:
    process, log = site.start("up-1.log")
    _wait_for_line(log, process, "platform is up", timeout=UP_TIMEOUT_S)
    recorded = _recorded_pids(site)
    assert {"up", "postgres", "dagster-code-server", "dagster-webserver", "dagster-daemon", "llm", "api"} <= set(recorded)
    assert _report_numbers(log, "embedded")[0] > 0, "the first start embeds the collection"
    second = subprocess.run([KB, "up"], env=site.env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert f"kb up is already running on {site.data_dir} (pid {process.pid})" in " ".join(second.stderr.split())
    assert _recorded_pids(site) == recorded, "a refused kb up touches nothing of the running one"

    assert _stop(process, log, signal.SIGTERM) == 0
    assert "stopping" in log.read_text()
    _assert_nothing_left(site, recorded, process)


def test_kb_up_recovers_after_a_crash_without_re_embedding(site: Site) -> None:
    process, log = site.start("up-2.log")
    _wait_for_line(log, process, "platform is up", timeout=UP_TIMEOUT_S)
    chunks = _chunks(site)
    assert chunks > 0

    # One long-lived code server (the proxy and the process it loads the code in) serves webserver and daemon:
    # the same processes over more than a daemon tick, none started by the daemon itself.
    observed_from = time.monotonic()
    servers = _code_server_processes(site)
    assert sum("code-server" in command for command in servers.values()) == 1, servers
    abandoned_run = _start_a_run_and_kill_it(site)
    time.sleep(max(0.0, 70 - (time.monotonic() - observed_from)))  # longer than a daemon tick (about a minute)
    assert _code_server_processes(site) == servers, "the code server processes changed (a code server per tick?)"
    daemon = psutil.Process(_recorded_pids(site)["dagster-daemon"])
    assert not [c for c in daemon.children(recursive=True) if "grpc" in c.cmdline()], "the daemon started a code server"

    # The crash: kb up and its PostgreSQL die at once; its children keep running and holding their ports.
    children = {name: pid for name, pid in _recorded_pids(site).items() if name not in ("up", "postgres")}
    postmaster = int((site.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    os.kill(process.pid, signal.SIGKILL)
    os.kill(postmaster, signal.SIGKILL)
    process.wait(timeout=30)
    assert all(psutil.pid_exists(pid) for pid in children.values()), "the children outlive a killed kb up"
    assert (site.data_dir / "postgres" / "postmaster.pid").exists()

    process, log = site.start("up-3.log")
    _wait_for_line(log, process, "platform is up", timeout=UP_TIMEOUT_S)
    text = log.read_text(errors="replace")
    assert "stopped what a killed kb up left running" in text
    assert not [pid for pid in children.values() if psutil.pid_exists(pid) and _is_platform_process(site, pid)]
    assert "automatic recovery in progress" in (site.data_dir / "postgres" / "server.log").read_text(errors="replace")
    assert f"marked run {abandoned_run} failed" in text
    assert abandoned_run in _runs(site, "FAILURE")
    assert _report_numbers(log, "embedded") == [0], "nothing is re-embedded after the crash"
    assert _chunks(site) == chunks

    recorded = _recorded_pids(site)
    assert _stop(process, log, signal.SIGINT) == 0
    _assert_nothing_left(site, recorded, process)


RUN_AND_HANG = textwrap.dedent("""
    import os, time
    import dagster as dg
    from kb.platform import dagster_environment
    from kb.settings import PlatformSettings, PostgresSettings
    os.environ.update(dagster_environment(PlatformSettings(), PostgresSettings()))

    @dg.asset
    def hangs() -> None:
        time.sleep(3600)

    dg.materialize([hangs], instance=dg.DagsterInstance.get())
""")


def _start_a_run_and_kill_it(site: Site) -> str:
    """A run in the platform's Dagster instance whose process is killed mid-step, as a crash leaves it: STARTED."""
    worker = subprocess.Popen([sys.executable, "-c", RUN_AND_HANG], env=site.env, cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 300
        while not (started := _runs(site, "STARTED")):
            assert worker.poll() is None, "the run's process exited"
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(1)
    finally:
        worker.kill()
        worker.wait()
    assert len(started) == 1
    return started[0]


def _runs(site: Site, status: str) -> list[str]:
    """Run ids in `status`, read from Dagster's run storage (the `dagster` database next to `kb`)."""
    with psycopg.connect(site.database_url.rsplit("/", 1)[0] + "/dagster") as conn:
        return [row[0] for row in conn.execute("SELECT run_id FROM runs WHERE status = %s", (status,))]


def test_kb_up_refuses_a_port_held_by_another_process(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        site = _site(tmp_path, KB_API_PORT=str(port))
        result = subprocess.run([KB, "up"], env=site.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"port {port} (KB_API_PORT) is in use by pid {os.getpid()}" in " ".join(result.stderr.split())
    assert not (site.data_dir / "postgres" / "postmaster.pid").exists(), "nothing was started"
    assert not list((site.data_dir / "run").glob("*.pid"))


SIGNALS_AROUND_A_RUN = textwrap.dedent("""
    import os, signal, time
    import dagster as dg
    from kb.ingest import stop_signals_kept

    @dg.asset
    def quick() -> None:
        pass

    @dg.asset
    def signalled() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as `docker stop` would, in the middle of a step
        time.sleep(5)

    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    with stop_signals_kept() as arrived:
        dg.materialize([quick], instance=dg.DagsterInstance.ephemeral())
    print("after a run:", signal.getsignal(signal.SIGTERM) is stop, sorted(arrived))
    with stop_signals_kept() as arrived:
        dg.materialize([signalled], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    print("after a signal:", signal.getsignal(signal.SIGTERM) is stop, sorted(arrived))
""")


def test_sigterm_keeps_its_handler_and_is_noticed_across_an_in_process_dagster_run() -> None:
    # SIGINT ignored, as a shell starts a background job: Dagster used to leave SIGTERM ignored after a run.
    result = subprocess.run([sys.executable, "-c", SIGNALS_AROUND_A_RUN], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "after a run: True []" in result.stdout
    assert f"after a signal: True [{int(signal.SIGTERM)}]" in result.stdout
