"""A real `redis-server` for tests: no configuration file, no persistence, on a free loopback port.

Use the `redis_url` fixture (session scope) after `from tests.redis_server import redis_url  # noqa: F401`.
The server stops at the end of the session.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from kb.platform import free_port

START_TIMEOUT_S = 10.0
MISSING = "redis-server not found: run `make redis` (installs Debian's redis-server)"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(MISSING)
    port = free_port()
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port} (exit code {server.poll()})")
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
