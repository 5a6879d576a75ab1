"""`kb up` as a user runs it: the platform starts on loopback, materializes every collection, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def test_kb_up_materializes_five_groups_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KB_DATA_DIR": str(tmp_path / "data"),
        "KB_POSTGRES_PORT": str(free_port()),
        "KB_DAGSTER_PORT": str(port),
    }
    kb = Path(sys.executable).parent / "kb"
    log = (tmp_path / "up.log").open("w+")
    process = subprocess.Popen([str(kb), "up"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while "platform is up" not in (tmp_path / "up.log").read_text():
            assert process.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "kb up did not finish starting"
            time.sleep(2)
        query = "{ assetNodes { groupName hasAssetChecks assetMaterializations(limit: 1) { timestamp } } }"
        nodes = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()["data"]["assetNodes"]
        groups = Counter(n["groupName"] for n in nodes)
        assert groups == dict.fromkeys(("technical_docs", "code_snippets", "incidents", "k8s_configs", "runbooks"), 6)
        assert all(n["assetMaterializations"] for n in nodes)
        assert sum(n["hasAssetChecks"] for n in nodes) == 20
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    assert "stopping" in (tmp_path / "up.log").read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()
