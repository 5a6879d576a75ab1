"""One running platform for the e2e tests: `kb up` with the 0.5B model, its own data dir, ports and
a writable copy of the sample knowledge base (webhook tests add documents to it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kb.settings import PROJECT_ROOT
from tests.conftest import SAMPLES, free_port

WEBHOOK_SECRET = "e2e-webhook-secret"


@dataclass(frozen=True)
class RunningPlatform:
    api: str
    dagster: str
    database_url: str
    knowledge_base: Path
    log: Path
    env: dict[str, str]


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
    ports = {name: free_port() for name in ("KB_POSTGRES_PORT", "KB_DAGSTER_PORT", "KB_API_PORT", "KB_LLM_PORT")}
    env = {
        **os.environ, **{k: str(v) for k, v in ports.items()},
        "KB_DATA_DIR": str(root / "data"), "KB_COLLECTIONS_FILE": str(root / "collections.yaml"),
        "KB_LLM_MODEL": "qwen2.5-coder-0.5b-instruct", "KB_LLM_CONTEXT_WINDOW": "4096", "KB_LLM_MAX_ANSWER_TOKENS": "256",
        "KB_API_WEBHOOK_SECRET": WEBHOOK_SECRET, "KB_LLM_TIMEOUT_S": "900",
        "KB_CONNECTORS_FILE": str(root / "connectors.yaml"),
    }  # fmt: skip
    log = root / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "kb"), "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        _wait_for_line(log, process, "platform is up", timeout=900)
        yield RunningPlatform(
            api=f"http://127.0.0.1:{ports['KB_API_PORT']}",
            dagster=f"http://127.0.0.1:{ports['KB_DAGSTER_PORT']}",
            database_url=f"postgresql://postgres@127.0.0.1:{ports['KB_POSTGRES_PORT']}/kb",
            knowledge_base=knowledge_base,
            log=log,
            env=env,
        )
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    # Ctrl-C stops everything it started, PostgreSQL included.
    assert "stopping" in log.read_text(errors="replace")
    assert not (root / "data" / "postgres" / "postmaster.pid").exists()
