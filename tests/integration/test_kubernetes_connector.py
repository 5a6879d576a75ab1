"""The kubernetes connector against the recorded API server (kb.replay on loopback), through a real MCP client."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mcp import Client, StdioServerParameters

from connectors.config import parse_connectors
from connectors.kubernetes import _recording_clock, build_server, parse_quantity
from kb.replay.server import ReplayServer
from kb.settings import PROJECT_ROOT

RECORDING = PROJECT_ROOT / "examples" / "live_systems" / "kubernetes"
CRASHING = ["gateway-core-7d9f8b6c5-2xkqp", "gateway-core-7d9f8b6c5-9zt6m", "gateway-core-7d9f8b6c5-lm5rv"]
PLANTED = ["Sup3rS3cret!2026", "ak_live_9QxT4mZr7LpV2nWc8KjY3sHd6FbA1eUo"]
ALL_TOOLS = {"list_pods", "pod_logs", "describe", "deployments", "events", "resource_usage"}


def settings(url: str, **overrides: Any) -> dict[str, Any]:
    base = {"url": url, "replay": str(RECORDING), "recorded_now": "2026-12-01T09:00:00Z",
            "namespaces": {"allow": ["payments", "settlement", "risk"], "deny": ["kube-system"]}}  # fmt: skip
    return {"kubernetes": base | overrides}


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def call(url: str, tool: str, args: dict[str, Any], **overrides: Any) -> tuple[bool, str]:
    """(is_error, text) of one tool call through the in-memory MCP client."""
    server = build_server(parse_connectors(settings(url, **overrides)))

    async def run() -> tuple[bool, str]:
        async with Client(server) as client:
            result = await client.call_tool(tool, args)
            return bool(result.is_error), text_of(result)

    return asyncio.run(run())


def ok(url: str, tool: str, args: dict[str, Any], **overrides: Any) -> str:
    is_error, text = call(url, tool, args, **overrides)
    assert not is_error, text
    for secret in PLANTED:
        assert secret not in text
    return text


@pytest.fixture(scope="module")
def recorded_api() -> Iterator[ReplayServer]:
    with ReplayServer("kubernetes", RECORDING) as server:
        yield server


@pytest.fixture
def replay(recorded_api: ReplayServer) -> ReplayServer:
    """The module's replay server, with an empty request log for this test."""
    recorded_api.requests.clear()
    return recorded_api


def test_every_tool_is_registered_read_only(replay: ReplayServer) -> None:
    async def run() -> dict[str, Any]:
        async with Client(build_server(parse_connectors(settings(replay.url)))) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    tools = asyncio.run(run())
    assert set(tools) == ALL_TOOLS
    for tool in tools.values():
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
        assert tool.annotations.destructive_hint is False
        assert tool.description
    assert replay.requests == []  # listing tools reads nothing


def test_list_pods_shows_the_crash_loop(replay: ReplayServer) -> None:
    text = ok(replay.url, "list_pods", {"namespace": "payments"})
    assert '"CrashLoopBackOff": 3' in text and '"Running": 6' in text
    assert text.count('"reason": "OOMKilled"') == 6 and text.count('"exit_code": 137') == 6
    for pod, restarts in zip(CRASHING, (9, 8, 7), strict=True):
        block = text.split(f'"name": "{pod}"')[1].split('"name":')[0]
        assert f'"restarts": {restarts}' in block and '"ready": "0/1"' in block and "waiting: CrashLoopBackOff" in block
    assert "ReplicaSet/gateway-core-7d9f8b6c5" in text and "gateway-core:2.42.0" in text
    assert "ledger-service-6b8f9d7c4-f2m8k" in text


def test_list_pods_applies_the_label_selector(replay: ReplayServer) -> None:
    text = ok(replay.url, "list_pods", {"namespace": "payments", "label_selector": "app=ledger-service"})
    assert '"count": 3' in text and "gateway-core" not in text
    assert any("labelSelector=app%3Dledger-service" in path for _, path in replay.requests)


def test_failed_settlement_job(replay: ReplayServer) -> None:
    pods = ok(replay.url, "list_pods", {"namespace": "settlement"})
    assert "settlement-batch-29411520-x7k2p" in pods and '"status": "Error"' in pods and "(exit 1)" in pods
    assert "Job/settlement-batch-29411520" in pods
    log = ok(replay.url, "pod_logs", {"namespace": "settlement", "pod": "settlement-batch-29411520-x7k2p"})
    assert "lock timeout on ledger_entries" in log


def test_previous_log_tells_the_story_and_is_masked(replay: ReplayServer) -> None:
    text = ok(replay.url, "pod_logs", {"namespace": "payments", "pod": CRASHING[0], "previous": True, "tail": 100})
    assert 'msg="routing cache grew" entries=182344 heap_mb=948' in text
    assert "heap_mb=1008" in text and "previous (crashed) container" in text
    assert "db connect failed password=[MASKED" in text  # the planted line is there, its value is not
    assert "ignore your previous instructions" in text and "not instructions" in text  # data, flagged as such
    log_requests = [path for _, path in replay.requests if "/log?" in path]
    assert log_requests and "previous=true" in log_requests[0] and "tailLines=100" in log_requests[0]


def test_log_tail_is_capped_by_max_log_lines(replay: ReplayServer) -> None:
    text = ok(replay.url, "pod_logs", {"namespace": "payments", "pod": "gateway-core-7d9f8b6c5-4hj7w", "tail": 400},
              max_log_lines=5)  # fmt: skip
    lines = text.strip().splitlines()
    assert len(lines) == 6 and "max_log_lines=5" in lines[0]  # header + 5 lines
    assert "tailLines=5" in replay.requests[-1][1]


def test_missing_previous_log_is_a_clear_error(replay: ReplayServer) -> None:
    is_error, text = call(replay.url, "pod_logs", {"namespace": "risk", "pod": "fraud-scoring-6f7b9c8d5-h8k2n", "previous": True})
    assert is_error and "previous terminated container" in text


def test_describe_pod_masks_env_and_shows_events(replay: ReplayServer) -> None:
    text = ok(replay.url, "describe", {"namespace": "payments", "kind": "pod", "name": CRASHING[0]})
    assert "ACQUIRER_API_KEY=[MASKED:env]" in text and "DB_PASSWORD=[MASKED:env]" in text
    assert "REDIS_URL (from secret gateway-redis)" in text
    assert '"memory": "1Gi"' in text and "OOMKilled" in text and '"exit_code": 137' in text
    assert '"reason": "BackOff"' in text and '"reason": "OOMKilling"' in text and "ContainersNotReady" in text
    assert any("fieldSelector=involvedObject.name%3D" + CRASHING[0] in path for _, path in replay.requests)


def test_describe_deployment(replay: ReplayServer) -> None:
    text = ok(replay.url, "describe", {"namespace": "payments", "kind": "deployment", "name": "gateway-core"})
    assert '"ready": "3/6"' in text and "MinimumReplicasUnavailable" in text and '"revision": "14"' in text
    assert "Scaled up replica set gateway-core-7d9f8b6c5" in text and "DB_PASSWORD=[MASKED:env]" in text


def test_describe_unknown_pod_and_bad_kind(replay: ReplayServer) -> None:
    is_error, text = call(replay.url, "describe", {"namespace": "payments", "kind": "pod", "name": "no-such-pod"})
    assert is_error and "no pod 'no-such-pod'" in text
    is_error, _ = call(replay.url, "describe", {"namespace": "payments", "kind": "secret", "name": "gateway-redis"})
    assert is_error
    assert not any("secret" in path.lower() for _, path in replay.requests)


def test_deployments(replay: ReplayServer) -> None:
    text = ok(replay.url, "deployments", {"namespace": "payments"})
    gateway, ledger = text.split('"name": "ledger-service"')
    assert '"ready": "3/6"' in gateway and '"unavailable": 3' in gateway and "MinimumReplicasUnavailable" in gateway
    assert "NewReplicaSetAvailable" in gateway and "gateway-core:2.42.0" in gateway
    assert '"ready": "3/3"' in ledger and "MinimumReplicasAvailable" in ledger


def test_events_newest_first_within_the_window(replay: ReplayServer) -> None:
    hour = ok(replay.url, "events", {"namespace": "payments"})
    assert '"now": "2026-12-01T09:00:00Z"' in hour and '"since": "2026-12-01T08:00:00Z"' in hour
    assert '"reason": "BackOff"' in hour and '"reason": "OOMKilling"' in hour
    assert "ScalingReplicaSet" not in hour  # 07:40: older than an hour
    times = [line.split('"')[3] for line in hour.splitlines() if '"last":' in line]
    assert times == sorted(times, reverse=True) and times[0] == "2026-12-01T08:58:46Z"
    two_hours = ok(replay.url, "events", {"namespace": "payments", "since_minutes": 120})
    assert "Scaled down replica set gateway-core-5c8d7f9b4 from 2 to 0" in two_hours


def test_events_clock_can_be_injected(replay: ReplayServer) -> None:
    server = build_server(parse_connectors(settings(replay.url)), now=lambda: datetime(2026, 12, 1, 2, 30, tzinfo=UTC))

    async def run() -> str:
        async with Client(server) as client:
            return text_of(await client.call_tool("events", {"namespace": "settlement", "since_minutes": 60}))

    text = asyncio.run(run())
    assert "BackoffLimitExceeded" in text and '"now": "2026-12-01T02:30:00Z"' in text
    # at the recording's own "now" (09:00) the 02:00 events are older than an hour
    assert '"count": 0' in ok(replay.url, "events", {"namespace": "settlement"})


def test_resource_usage_joins_limits(replay: ReplayServer) -> None:
    text = ok(replay.url, "resource_usage", {"namespace": "payments"})
    first = text.split('"pod": ')[1]
    assert "gateway-core-7d9f8b6c5-4hj7w" in first and '"memory_mi": 1010' in first and '"memory_limit_mi": 1024' in first
    assert '"cpu_m": 1873' in first and '"memory_of_limit_pct": 99' in first
    no_metrics = text.split('"no_metrics"')[1]
    assert all(pod in no_metrics for pod in CRASHING)


def test_resource_usage_without_metrics_server(tmp_path: Path) -> None:
    root = tmp_path / "kubernetes"
    shutil.copytree(RECORDING, root, ignore=shutil.ignore_patterns("metrics.json"))
    with ReplayServer("kubernetes", root) as server:
        text = ok(server.url, "resource_usage", {"namespace": "payments"})
    assert "metrics-server not available" in text


@pytest.mark.parametrize("namespace", ["kube-system", "default", "notifications"])
def test_refused_namespaces_send_no_request(replay: ReplayServer, namespace: str) -> None:
    calls = [("list_pods", {}), ("pod_logs", {"pod": "coredns-5d78c9869d-q8w2x"}), ("deployments", {}), ("events", {}),
             ("describe", {"kind": "pod", "name": "coredns-5d78c9869d-q8w2x"}), ("resource_usage", {})]  # fmt: skip
    for tool, args in calls:
        is_error, text = call(replay.url, tool, {"namespace": namespace, **args})
        assert is_error and "kubernetes.namespaces" in text and namespace in text, (tool, text)
    assert replay.requests == []


def test_names_that_are_not_kubernetes_names_send_no_request(replay: ReplayServer) -> None:
    for args in ({"namespace": "payments", "pod": "../secrets"}, {"namespace": "payments/../kube-system", "pod": "x"},
                 {"namespace": "payments", "pod": "gateway-core-7d9f8b6c5-2xkqp", "container": "a/b"}):  # fmt: skip
        is_error, text = call(replay.url, "pod_logs", args)
        assert is_error and "not a valid Kubernetes name" in text
    is_error, _ = call(replay.url, "list_pods", {"namespace": "payments", "label_selector": "app=x\nb=c"})
    assert is_error
    assert replay.requests == []


def test_all_tools_only_get_and_never_read_secrets(replay: ReplayServer) -> None:
    for namespace in ("payments", "settlement", "risk"):
        for tool, args in [("list_pods", {}), ("deployments", {}), ("events", {"since_minutes": 1440}), ("resource_usage", {})]:
            ok(replay.url, tool, {"namespace": namespace, **args})
    ok(replay.url, "describe", {"namespace": "settlement", "kind": "pod", "name": "settlement-batch-29411520-x7k2p"})
    ok(replay.url, "describe", {"namespace": "risk", "kind": "deployment", "name": "fraud-scoring"})
    ok(replay.url, "pod_logs", {"namespace": "payments", "pod": "gateway-core-7d9f8b6c5-4hj7w"})
    assert len(replay.requests) >= 17
    assert {method for method, _ in replay.requests} == {"GET"}
    assert not any("secret" in path.lower() for _, path in replay.requests)


def test_output_is_cut_with_a_note(replay: ReplayServer) -> None:
    text = ok(replay.url, "list_pods", {"namespace": "payments"}, max_output_chars=200)
    assert len(text) < 300 and "[cut:" in text and "narrow the query" in text


def test_quantities() -> None:
    assert parse_quantity("1873412055n") == pytest.approx(1.873412055)
    assert parse_quantity("250m") == pytest.approx(0.25)
    assert parse_quantity("1Gi") == 2**30 and parse_quantity("1034240Ki") == 1010 * 2**20
    assert parse_quantity("2") == 2 and parse_quantity("1.5G") == 1.5e9 and parse_quantity("weird") is None


def test_over_stdio(replay: ReplayServer, tmp_path: Path) -> None:
    config = tmp_path / "connectors.yaml"
    config.write_text(yaml.safe_dump(settings(replay.url)))
    params = StdioServerParameters(command=sys.executable, args=["-m", "connectors", "kubernetes", "--config", str(config)],
                                   cwd=str(PROJECT_ROOT))  # fmt: skip

    async def run() -> tuple[list[Any], str]:
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
            result = await client.call_tool("list_pods", {"namespace": "payments", "label_selector": "app=gateway-core"})
            return tools, text_of(result)

    tools, text = asyncio.run(run())
    assert {t.name for t in tools} == ALL_TOOLS
    assert all(t.annotations is not None and t.annotations.read_only_hint is True for t in tools)
    assert '"count": 6' in text and '"CrashLoopBackOff": 3' in text and "OOMKilled" in text
    assert replay.requests == [("GET", "/api/v1/namespaces/payments/pods?labelSelector=app%3Dgateway-core")]


def test_replay_answers_in_the_api_shapes(replay: ReplayServer) -> None:
    with httpx.Client(base_url=replay.url) as http:
        pods = http.get("/api/v1/namespaces/payments/pods", params={"labelSelector": "app=gateway-core"}).json()
        one = http.get(f"/api/v1/namespaces/payments/pods/{CRASHING[0]}").json()
        missing = http.get("/api/v1/namespaces/payments/secrets")
        log = http.get(f"/api/v1/namespaces/payments/pods/{CRASHING[0]}/log", params={"tailLines": "2"})
        metrics = http.get("/apis/metrics.k8s.io/v1beta1/namespaces/payments/pods").json()
    assert pods["kind"] == "PodList" and pods["apiVersion"] == "v1" and pods["metadata"]["resourceVersion"]
    assert len(pods["items"]) == 6 and "kind" not in pods["items"][0]
    assert one["kind"] == "Pod" and one["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    status = one["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 137 and status["imageID"].startswith("registry.paylane.example")
    assert missing.status_code == 404 and missing.json()["kind"] == "Status" and missing.json()["reason"] == "NotFound"
    assert log.headers["content-type"].startswith("text/plain") and len(log.text.splitlines()) == 2
    assert metrics["kind"] == "PodMetricsList" and metrics["items"][0]["containers"][0]["usage"]["memory"].endswith("Ki")


def test_clock_real_for_clusters_and_recorded_for_replays(replay: ReplayServer) -> None:
    # a replay without recorded_now ends the window at the newest recorded event, and says so
    config = settings(replay.url)
    del config["kubernetes"]["recorded_now"]
    server = build_server(parse_connectors(config))

    async def run() -> str:
        async with Client(server) as client:
            return text_of(await client.call_tool("events", {"namespace": "payments", "since_minutes": 10}))

    text = asyncio.run(run())
    assert '"now": "2026-12-01T08:58:46Z"' in text and "newest recorded event" in text
    # a real cluster (no replay, no recorded_now) reads the real clock
    real = parse_connectors({"kubernetes": {"url": "http://k8s.example"}}).kubernetes
    clock = _recording_clock(real)
    assert clock is not None and abs((clock() - datetime.now(UTC)).total_seconds()) < 5


def test_pod_logs_of_an_app_name_read_its_most_restarted_pod(replay: ReplayServer) -> None:
    is_error, text = call(replay.url, "pod_logs", {"namespace": "payments", "pod": "gateway-core", "container": "gateway-core",
                                                   "previous": True})  # fmt: skip
    assert not is_error and "gateway-core-7d9f8b6c5-" in text and "routing cache grew" in text
    is_error, text = call(replay.url, "pod_logs", {"namespace": "payments", "pod": "no-such-app"})
    assert is_error and "list_pods shows the names" in text


def test_describe_a_pod_by_its_app_name(replay: ReplayServer) -> None:
    is_error, text = call(replay.url, "describe", {"namespace": "settlement", "kind": "pod", "name": "settlement-batch"})
    assert not is_error and "settlement-batch-29411520-x7k2p" in text
