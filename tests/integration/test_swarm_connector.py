"""The swarm connector against a real dockerd in Swarm mode (tests/docker_swarm.py), through the real MCP client.

The scenario: stack `paylane-edge` with `edge-proxy` (2 replicas, healthy, secrets in its env) and `notifier`
(restart on-failure, logs a connection error and a planted password, exits 1), plus `batch-reports`
(0 replicas, no stack). The test creates them with the docker CLI; the connector only reads.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters

from connectors.config import parse_connectors
from connectors.http import ReadOnlyClient, ReadOnlyViolation
from connectors.swarm import _api_prefix, build_server, demultiplex
from tests import docker_swarm as swarm_fixture
from tests.docker_swarm import IMAGE, DockerSwarm, docker_swarm  # noqa: F401  (the fixture, by name)

pytestmark = pytest.mark.anyio

STACK = "com.docker.stack.namespace=paylane-edge"
PROXY_LINE = "proxy ok upstream=gateway-core latency_ms=12"
REDIS_ERROR = "dial tcp redis:6379: connect: connection refused"
PLANTED = ("hunter2secret", "tok_live_9Qx7Lm2Vb8Rz4Kp1", "Sup3rS3cret!2026")
TOOLS = {"list_services", "service_detail", "service_logs", "stacks", "service_health", "list_nodes"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _failed(swarm: DockerSwarm, service: str) -> int:
    return sum(1 for t in swarm.tasks(service) if t["Status"]["State"] == "failed")


def _running(swarm: DockerSwarm, service: str) -> int:
    return sum(1 for t in swarm.tasks(service) if t["Status"]["State"] == "running")


@pytest.fixture(scope="module")
def swarm(docker_swarm: DockerSwarm) -> Iterator[DockerSwarm]:  # noqa: F811
    """The paylane-edge services, running (edge-proxy) and crash-looping to its retry limit (notifier)."""
    create = ("service", "create", "--detach", "--quiet")
    docker_swarm.docker(
        *create, "--name", "edge-proxy", "--replicas", "2", "--label", STACK,
        "--env", "DB_PASSWORD=hunter2secret", "--env", f"API_TOKEN={PLANTED[1]}", "--env", "UPSTREAM=gateway-core",
        "--limit-memory", "64M", "--update-parallelism", "1", "--update-failure-action", "rollback",
        IMAGE, "sh", "-c", f'while true; do echo "{PROXY_LINE}"; sleep 1; done',
    )  # fmt: skip
    docker_swarm.docker(
        *create, "--name", "notifier", "--replicas", "1", "--label", STACK,
        "--restart-condition", "on-failure", "--restart-delay", "500ms", "--restart-max-attempts", "2",
        IMAGE, "sh", "-c", f'echo "{REDIS_ERROR}"; echo "password={PLANTED[2]}" >&2; exit 1',
    )  # fmt: skip
    docker_swarm.docker(*create, "--name", "batch-reports", "--replicas", "0", IMAGE, "sleep", "3600")
    docker_swarm.wait_for("edge-proxy 2/2 running", lambda: _running(docker_swarm, "edge-proxy") == 2)
    docker_swarm.wait_for("notifier failing twice", lambda: _failed(docker_swarm, "notifier") >= 2)
    docker_swarm.wait_for("edge-proxy logging", lambda: PROXY_LINE in docker_swarm.docker("service", "logs", "edge-proxy"))
    yield docker_swarm
    docker_swarm.docker("service", "rm", "edge-proxy", "notifier", "batch-reports", check=False)


def _server(swarm: DockerSwarm, **settings: Any):  # type: ignore[no-untyped-def]
    return build_server(parse_connectors({"swarm": {"url": swarm.url, **settings}}))


async def _call(swarm: DockerSwarm, tool: str, args: dict[str, Any] | None = None, **settings: Any) -> tuple[bool, str]:
    async with Client(_server(swarm, **settings)) as client:
        result = await client.call_tool(tool, args or {})
    return bool(result.is_error), result.content[0].text  # type: ignore[union-attr]


async def _json(swarm: DockerSwarm, tool: str, args: dict[str, Any] | None = None) -> Any:
    error, text = await _call(swarm, tool, args)
    assert not error, text
    return json.loads(text)


def _no_secrets(text: str) -> None:
    for secret in PLANTED:
        assert secret not in text


async def test_only_read_tools_exist(swarm: DockerSwarm) -> None:
    async with Client(_server(swarm)) as client:
        tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == TOOLS
    assert all(t.annotations and t.annotations.read_only_hint and not t.annotations.destructive_hint for t in tools)
    assert all(t.description for t in tools)


async def test_list_services_counts_desired_and_running(swarm: DockerSwarm) -> None:
    data = await _json(swarm, "list_services")
    by_name = {s["name"]: s for s in data["services"]}
    assert set(by_name) == {"edge-proxy", "notifier", "batch-reports"}
    proxy, notifier = by_name["edge-proxy"], by_name["notifier"]
    assert (proxy["desired"], proxy["running"], proxy["mode"], proxy["image"]) == (2, 2, "replicated", IMAGE)
    assert (notifier["desired"], notifier["stack"]) == (1, "paylane-edge")
    assert notifier["running"] <= 1  # between restarts; 0 once the retry limit is spent
    assert (by_name["batch-reports"]["desired"], by_name["batch-reports"]["running"]) == (0, 0)

    stacked = await _json(swarm, "list_services", {"stack": "paylane-edge"})
    assert {s["name"] for s in stacked["services"]} == {"edge-proxy", "notifier"}
    assert (await _json(swarm, "list_services", {"stack": "no-such-stack"}))["services"] == []


async def test_service_health_shows_failed_tasks_with_exit_code(swarm: DockerSwarm) -> None:
    data = await _json(swarm, "service_health", {"service": "notifier"})
    failed = [t for t in data["tasks"] if t["state"] == "failed"]
    assert len(failed) >= 2
    assert all(t["exit_code"] == 1 and t["error"] == "task: non-zero exit (1)" for t in failed)
    assert all(t["task"] == "notifier.1" and t["desired"] == "shutdown" and t["since"].endswith("Z") for t in failed)
    summary = data["summary"]
    assert summary["running"] in ("0/1", "1/1") and summary["verdict"] != "healthy"
    assert summary["last_failure"]["exit_code"] == 1 and int(summary["failed_in_last_tasks"].split("/")[0]) >= 2

    healthy = await _json(swarm, "service_health", {"service": "edge-proxy"})
    assert healthy["summary"]["running"] == "2/2" and healthy["summary"]["verdict"] == "healthy"
    assert {t["task"] for t in healthy["tasks"]} == {"edge-proxy.1", "edge-proxy.2"}
    assert all(t["state"] == "running" and "exit_code" not in t for t in healthy["tasks"])
    assert {t["node"] for t in healthy["tasks"]} == {swarm.api("/nodes")[0]["Description"]["Hostname"]}


async def test_service_logs_are_demultiplexed_and_masked(swarm: DockerSwarm) -> None:
    error, text = await _call(swarm, "service_logs", {"service": "notifier"})
    assert not error, text
    assert REDIS_ERROR in text
    assert "password=[MASKED" in text and "notifier.1 stderr password=" in text
    _no_secrets(text)
    assert not any(ch in text for ch in "\x00\x01\x02")  # no frame headers leaked into the text
    lines = text.splitlines()[1:]
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ notifier\.1 ", line) for line in lines)

    error, proxy = await _call(swarm, "service_logs", {"service": "edge-proxy", "tail": 3})
    body = proxy.splitlines()[1:]
    assert not error and len(body) == 3 and all(line.endswith(PROXY_LINE) for line in body)
    stamps = [line[:20] for line in body]
    assert sorted(stamps) == stamps and {line.split()[1] for line in body} <= {"edge-proxy.1", "edge-proxy.2"}


async def test_service_logs_tail_capped_by_config_and_since(swarm: DockerSwarm) -> None:
    error, text = await _call(swarm, "service_logs", {"service": "edge-proxy", "tail": 400}, max_log_lines=4)
    assert not error and "tail=4" in text.splitlines()[0] and len(text.splitlines()) == 5
    error, text = await _call(swarm, "service_logs", {"service": "edge-proxy", "since_minutes": 5})
    assert not error and PROXY_LINE in text and "last 5 min" in text


async def test_service_detail_masks_env_values_keeps_names(swarm: DockerSwarm) -> None:
    error, text = await _call(swarm, "service_detail", {"service": "edge-proxy"})
    assert not error, text
    _no_secrets(text)
    detail = json.loads(text)
    assert detail["env"] == ["DB_PASSWORD=[MASKED:env]", "API_TOKEN=[MASKED:env]", "UPSTREAM=[MASKED:env]"]
    assert (detail["replicas"], detail["stack"], detail["resources"]["limits"]["memory_mib"]) == (2, "paylane-edge", 64)
    assert detail["update_config"]["failure_action"] == "rollback" and detail["update_config"]["parallelism"] == 1

    notifier = await _json(swarm, "service_detail", {"service": "notifier"})
    assert notifier["restart_policy"] == {"condition": "on-failure", "delay_s": 0.5, "max_attempts": 2}
    assert "password=[MASKED" in notifier["command"] and PLANTED[2] not in json.dumps(notifier)


async def test_stacks_groups_services_by_label(swarm: DockerSwarm) -> None:
    data = await _json(swarm, "stacks")
    assert data["stacks"] == [{"stack": "paylane-edge", "services": 2, "names": ["edge-proxy", "notifier"]}]
    assert data["services_outside_stacks"] == ["batch-reports"]


async def test_list_nodes_one_manager_leader(swarm: DockerSwarm) -> None:
    data = await _json(swarm, "list_nodes")
    assert data["count"] == 1
    node = data["nodes"][0]
    assert (node["role"], node["leader"], node["availability"], node["state"]) == ("manager", True, "active", "ready")
    assert node["reachability"] == "reachable"
    assert node["engine"] == swarm.docker("version", "--format", "{{.Server.Version}}").strip()


async def test_bad_arguments_give_clear_errors(swarm: DockerSwarm) -> None:
    error, text = await _call(swarm, "service_health", {"service": "no-such-service"})
    assert error and "'no-such-service' not found" in text and "list_services" in text
    error, text = await _call(swarm, "service_logs", {"service": "../../containers/x"})
    assert error and "not a valid Docker name" in text
    error, text = await _call(swarm, "service_logs", {"service": "edge-proxy", "tail": 0})
    assert error and "greater than or equal to 1" in text
    error, text = await _call(swarm, "list_services", {"stack": "a b"})
    assert error and "not a valid Docker name" in text


async def test_unreachable_daemon_says_so(tmp_path: Path) -> None:
    server = build_server(parse_connectors({"swarm": {"url": f"unix://{tmp_path}/absent.sock"}}))
    async with Client(server) as client:
        result = await client.call_tool("list_nodes", {})
    assert result.is_error and "cannot reach Docker" in result.content[0].text  # type: ignore[union-attr]


async def test_output_is_capped(swarm: DockerSwarm) -> None:
    error, text = await _call(swarm, "service_logs", {"service": "edge-proxy", "tail": 50}, max_output_chars=200)
    assert not error and "[cut:" in text and len(text) < 300


async def test_read_only_client_refuses_post_to_real_daemon(swarm: DockerSwarm) -> None:
    client = ReadOnlyClient(swarm.url)
    spec = {"Name": "sneaky", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": ["sleep", "60"]}}}
    try:
        with pytest.raises(ReadOnlyViolation):
            await client._http.post("/v1.41/services/create", json=spec)  # reaching past the GET-only API on purpose
        assert (await client.get_json("/version"))["ApiVersion"]  # GET still works
    finally:
        await client.aclose()
    assert "sneaky" not in swarm.docker("service", "ls", "--format", "{{.Name}}").split()


def test_demultiplex_frames_and_raw_tty_streams() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n" + b"\x02\x00\x00\x00\x00\x00\x00\x04oops" + b"\x02\0\0\0\0\0\0\x02!\n"
    assert demultiplex(frames) == [("stdout", "hello"), ("stderr", "oops!")]
    assert demultiplex(b"tty line one\ntty line two\n") == [("stdout", "tty line one"), ("stdout", "tty line two")]
    assert demultiplex(b"") == []


def test_api_version_is_the_daemons_capped_at_the_checked_one() -> None:
    assert [_api_prefix(v) for v in ("1.41", "1.51", "2.0", "")] == ["/v1.41", "/v1.47", "/v1.47", "/v1.47"]


def test_missing_dockerd_fails_with_make_docker_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swarm_fixture.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="make docker"):
        swarm_fixture._require_tools()


async def test_stdio_server_lists_read_only_tools_and_answers(swarm: DockerSwarm, tmp_path: Path) -> None:
    config = tmp_path / "connectors.yaml"
    config.write_text(yaml.safe_dump({"swarm": {"url": swarm.url}}))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "connectors", "swarm", "--config", str(config)], cwd=str(Path(__file__).parents[2])
    )
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        result = await client.call_tool("list_services", {"stack": "paylane-edge"})
    assert {t.name for t in tools} == TOOLS and all(t.annotations and t.annotations.read_only_hint for t in tools)
    assert not result.is_error
    names = {s["name"] for s in json.loads(result.content[0].text)["services"]}  # type: ignore[union-attr]
    assert names == {"edge-proxy", "notifier"}
