"""A real Docker Engine in Swarm mode for tests: `dockerd` started here, swarm initialised, a busybox image imported.

Use it from a test module with `from tests.docker_swarm import docker_swarm  # noqa: F401` and ask for the
`docker_swarm` fixture (session scope: one daemon for every module that uses it). Tests create their own
services with `swarm.docker("service", "create", ...)`; whatever is left is removed at teardown, the swarm is
left, the daemon stopped and its folders removed.

The daemon runs in its own network and mount namespaces (`unshare --net --mount`): the bridges, veths and
overlay mounts it makes live and die with it, so nothing is left on the host (without that, `docker0` and
`docker_gwbridge` stay behind after dockerd exits). `--iptables=false`: inside a fresh namespace there is nothing
to NAT to and the services need no network; the default bridge is kept, it costs nothing there.
No registry is reachable, so the image is a busybox rootfs made here and fed to `docker import`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

IMAGE = "paylane/busybox:1"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "sleep", "cat", "date")
START_TIMEOUT_S = 30.0
MISSING = "{what} not found: run `make docker` (installs Debian's docker.io and busybox-static)"


@dataclass
class DockerSwarm:
    """A running single-node swarm: its socket, a CLI bound to it, and a small read helper for waiting."""

    root: Path
    cli: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        """The connector's `swarm.url` for this daemon."""
        return f"unix://{self.socket}"

    def docker(self, *args: str, stdin: bytes | None = None, check: bool = True) -> str:
        """Run the docker CLI against this daemon; its stdout."""
        proc = subprocess.run(
            [self.cli, "-H", self.url, *args], input=stdin, capture_output=True, env=self.env, timeout=60, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def api(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON document from the Engine API (test-side reads for waiting, not the connector's client)."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://docker", timeout=10) as c:
            response = c.get(path, params=params)
            response.raise_for_status()
            return response.json()

    def tasks(self, service: str) -> list[dict[str, Any]]:
        return self.api("/tasks", {"filters": json.dumps({"service": [service]})})  # type: ignore[no-any-return]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll `predicate` until it holds; fail the test run with `what` when it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise TimeoutError(f"swarm: {what} did not happen within {timeout:.0f}s")

    def remove_all_services(self) -> None:
        ids = self.docker("service", "ls", "-q", check=False).split()
        if ids:
            self.docker("service", "rm", *ids, check=False)


def _require_tools() -> tuple[str, str, str]:
    """dockerd, the docker CLI and unshare, or a failure that says how to get them (never a skip)."""
    dockerd, cli, unshare = shutil.which("dockerd"), shutil.which("docker"), shutil.which("unshare")
    if not dockerd:
        pytest.fail(MISSING.format(what="dockerd"))
    if not cli:
        pytest.fail(MISSING.format(what="the docker CLI"))
    if not BUSYBOX.exists():
        pytest.fail(MISSING.format(what=str(BUSYBOX)))
    if not unshare:
        pytest.fail("unshare not found (util-linux): the test daemon runs in its own network namespace")
    if os.geteuid() != 0:
        pytest.fail("dockerd needs root: run the swarm tests as root")
    return dockerd, cli, unshare


def _busybox_rootfs_tar() -> bytes:
    """A tar of /bin/busybox plus applet symlinks: enough of an image for `sh -c 'echo …; sleep 1'`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
    return buffer.getvalue()


def _start_dockerd(dockerd: str, unshare: str, root: Path) -> subprocess.Popen[bytes]:
    """dockerd in fresh net+mount namespaces, its state under `root`; returns once the socket answers."""
    daemon = (
        f"ip link set lo up && exec {dockerd} --host unix://{root}/docker.sock --data-root {root}/data"
        f" --exec-root {root}/exec --pidfile {root}/docker.pid --iptables=false --log-level=warn"
    )
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [unshare, "--net", "--mount", "--propagation", "private", "sh", "-c", daemon],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited ({proc.returncode}):\n{_log_tail(root)}")
        if (root / "docker.sock").exists() and _answers(root / "docker.sock"):
            return proc
        time.sleep(0.1)
    _stop_dockerd(proc)
    raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT_S:.0f}s:\n{_log_tail(root)}")


def _answers(socket: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://docker", timeout=2) as c:
            return c.get("/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(root: Path, lines: int = 20) -> str:
    path = root / "dockerd.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dockerd stops its containers and containerd), SIGKILL to the whole group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_swarm() -> Iterator[DockerSwarm]:
    """A real single-node Docker swarm (manager, leader) with the busybox image `paylane/busybox:1` imported."""
    dockerd, cli, unshare = _require_tools()
    # Short path under /tmp: containerd's sockets live below exec-root and unix socket paths stop at 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="kb-swarm-", dir="/tmp"))
    env = {**os.environ, "DOCKER_CONFIG": str(root / "cli")}  # the CLI writes its config here, not in ~/.docker
    env.pop("DOCKER_HOST", None)
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _start_dockerd(dockerd, unshare, root)
        swarm = DockerSwarm(root=root, cli=cli, env=env)
        swarm.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        swarm.docker("import", "-", IMAGE, stdin=_busybox_rootfs_tar())
        yield swarm
        swarm.remove_all_services()
        swarm.docker("swarm", "leave", "--force", check=False)
    finally:
        if proc is not None:
            _stop_dockerd(proc)
        shutil.rmtree(root, ignore_errors=True)
