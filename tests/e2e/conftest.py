"""One running platform for the e2e tests: `kb up` with the 0.5B model, its own data dir, ports and
a writable copy of the sample knowledge base (webhook tests add documents to it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from kb.settings import PROJECT_ROOT
from tests.conftest import SAMPLES, free_port, stop_process_group

WEBHOOK_SECRET = "e2e-webhook-secret"
FORWARDED_USERS = {"admin@example.com": ["devops"], "vera@example.com": ["viewer"]}


KEY = re.compile(r"kb_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


@dataclass
class RunningPlatform:
    api: str
    dagster: str
    database_url: str
    knowledge_base: Path
    log: Path
    env: dict[str, str]
    admin_key: str = ""
    _keys: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    def key_for(self, user: str, role: str = "devops") -> str:
        """An API key for `user`, made with `kb keys create --json` as an operator would (the platform is up)."""
        if user not in self._keys:
            command = [str(Path(sys.executable).parent / "kb"), "keys", "create", "--user", user, "--role", role, "--json"]
            out = subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=120).stdout
            self._keys[user] = json.loads(out.strip().splitlines()[-1])["key"]
        return self._keys[user]

    def http_for(self, user: str) -> httpx.Client:
        """An HTTP client signed in as `user` (devops role)."""
        if user not in self._clients:
            self._clients[user] = httpx.Client(headers={"Authorization": f"Bearer {self.key_for(user)}"}, timeout=30)
        return self._clients[user]

    @property
    def http(self) -> httpx.Client:
        """Signed in with the admin key that the first `kb up` printed."""
        if "admin" not in self._clients:
            self._clients["admin"] = httpx.Client(headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)
        return self._clients["admin"]


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, f"kb up did not print {line!r} in {timeout}s"
        time.sleep(2)


def _connectors_on_free_ports() -> str:
    """The shipped connectors.yaml (the sample company's recorded systems), each system on a free port."""
    text = (PROJECT_ROOT / "connectors.yaml").read_text()
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    return text


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    root = tmp_path_factory.mktemp("platform")
    knowledge_base = root / "kb"
    shutil.copytree(SAMPLES, knowledge_base)
    config = yaml.safe_load((PROJECT_ROOT / "collections.yaml").read_text())
    for name, body in config["collections"].items():
        body["source"]["path"] = str(knowledge_base / name)
    (root / "collections.yaml").write_text(yaml.safe_dump(config))
    (root / "connectors.yaml").write_text(_connectors_on_free_ports())
    roles = yaml.safe_load((PROJECT_ROOT / "roles.yaml").read_text())
    roles["users"] = FORWARDED_USERS  # the people a gateway (Open WebUI) forwards: test_openwebui_shapes.py
    (root / "roles.yaml").write_text(yaml.safe_dump(roles))
    ports = {name: free_port() for name in ("KB_POSTGRES_PORT", "KB_DAGSTER_PORT", "KB_API_PORT", "KB_LLM_PORT")}
    env = {
        **os.environ, **{k: str(v) for k, v in ports.items()},
        "KB_DATA_DIR": str(root / "data"), "KB_COLLECTIONS_FILE": str(root / "collections.yaml"),
        "KB_LLM_MODEL": "qwen2.5-coder-0.5b-instruct", "KB_LLM_CONTEXT_WINDOW": "4096", "KB_LLM_MAX_ANSWER_TOKENS": "256",
        "KB_API_WEBHOOK_SECRET": WEBHOOK_SECRET, "KB_LLM_TIMEOUT_S": "900",
        "KB_CONNECTORS_FILE": str(root / "connectors.yaml"), "KB_AUTH_ROLES_FILE": str(root / "roles.yaml"),
    }  # fmt: skip
    log = root / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "kb"), "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        _wait_for_line(log, process, "platform is up", timeout=900)
        printed = KEY.findall(log.read_text(errors="replace"))
        assert len(printed) == 1, "the first kb up prints exactly one admin key"
        yield RunningPlatform(
            api=f"http://127.0.0.1:{ports['KB_API_PORT']}",
            dagster=f"http://127.0.0.1:{ports['KB_DAGSTER_PORT']}",
            database_url=f"postgresql://postgres@127.0.0.1:{ports['KB_POSTGRES_PORT']}/kb",
            knowledge_base=knowledge_base,
            log=log,
            env=env,
            admin_key=printed[0],
        )
    finally:
        assert stop_process_group(process, signal.SIGINT, 120), "kb up did not stop on Ctrl-C within 120 s"
    # Ctrl-C stops everything it started, PostgreSQL included.
    assert "stopping" in log.read_text(errors="replace")
    assert not (root / "data" / "postgres" / "postmaster.pid").exists()
