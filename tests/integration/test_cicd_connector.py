"""The cicd connector against recorded ArgoCD and Gitea Actions APIs (real HTTP replay servers), through a real MCP client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters

from connectors import cicd
from connectors.config import ConnectorsConfig, parse_connectors
from kb.replay.server import ReplayServer
from tests.mcp_calls import call_tool

ROOT = Path(__file__).resolve().parents[2]
GC = "payments/gateway-core"
BEARER = "9c1f4e7a2b8d5f0e3a6c9b2d7e4f1a8c5b0d3e6f9a2c7b4e"  # planted in job 4389's log
NAMESPACES = {"allow": ["payments", "settlement", "risk", "notifications"], "deny": ["kube-system"]}
ARGO_TOOLS = {"argocd_apps", "argocd_app", "argocd_resource_tree"}
BUILD_TOOLS = {"build_runs", "build_logs"}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ReplayServer, ReplayServer]]:
    with (
        ReplayServer("gitea", ROOT / "examples/live_systems/gitea") as git,
        ReplayServer("argocd", ROOT / "examples/live_systems/argocd") as argo,
    ):
        yield git, argo


def settings(git: ReplayServer | None, argo: ReplayServer | None, **cicd_extra: Any) -> dict[str, Any]:
    return {
        "gitea": {"url": git.url if git else None, "repos": {"allow": ["payments/*", "risk/*", "admin/k3s-gitops"]}},
        "kubernetes": {"namespaces": NAMESPACES},
        "cicd": {"url": git.url if git else None, "argocd_url": argo.url if argo else None, **cicd_extra},
    }


def config(servers: tuple[ReplayServer, ReplayServer], **cicd_extra: Any) -> ConnectorsConfig:
    return parse_connectors(settings(*servers, **cicd_extra))


def call(cfg: ConnectorsConfig, name: str, /, **args: Any) -> tuple[bool, str]:
    return call_tool(cicd.build_server(cfg), name, args)


def ok(cfg: ConnectorsConfig, name: str, /, **args: Any) -> str:
    is_error, text = call(cfg, name, **args)
    assert not is_error, text
    return text


def tool_names(cfg: ConnectorsConfig) -> dict[str, Any]:
    async def listed() -> dict[str, Any]:
        async with Client(cicd.build_server(cfg)) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    return asyncio.run(listed())


def test_tools_are_read_only_and_only_for_configured_backends(servers: tuple[ReplayServer, ReplayServer]) -> None:
    git, argo = servers
    both = tool_names(config(servers))
    assert set(both) == ARGO_TOOLS | BUILD_TOOLS
    assert all(t.annotations and t.annotations.read_only_hint and not t.annotations.destructive_hint for t in both.values())
    assert set(tool_names(parse_connectors(settings(None, argo)))) == ARGO_TOOLS
    assert set(tool_names(parse_connectors(settings(git, None)))) == BUILD_TOOLS


def test_argocd_apps_lists_status_and_hides_kube_system(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "argocd_apps")
    for name in ("gateway-core", "ledger-service", "fraud-scoring", "notification-service"):
        assert f'"name": "{name}"' in text
    assert "kube-dns-addon" not in text and "kube-system" not in text
    assert "1 applications deploying outside kubernetes.namespaces" in text
    gateway = text[text.index('"gateway-core"') : text.index('"ledger-service"')]
    assert '"Synced"' in gateway and '"Degraded"' in gateway and "9f3c2ab" in gateway
    notification = text[text.index('"notification-service"') :]
    assert '"OutOfSync"' in notification and '"Healthy"' in notification


def test_argocd_apps_by_project(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "argocd_apps", project="risk")
    assert "fraud-scoring" in text and "gateway-core" not in text
    assert any("projects=risk" in path for _, path in servers[1].requests)


def test_argocd_app_history_newest_first(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "argocd_app", name="gateway-core")
    assert '"health": "Degraded"' in text and "does not have minimum availability" in text
    history = text[text.index("history_newest_first") :]
    assert history.index("9f3c2ab") < history.index("41c07d1")
    assert "2026-12-01T07:40:12Z" in history and "2026-11-24T10:02:11Z" in history
    assert "v2.42.0" in history and "v2.41.0" in history


def test_app_in_kube_system_is_refused_and_its_tree_never_asked_for(servers: tuple[ReplayServer, ReplayServer]) -> None:
    cfg, argo = config(servers), servers[1]
    is_error, text = call(cfg, "argocd_app", name="kube-dns-addon")
    assert is_error and "kubernetes.namespaces" in text and "kube-system" in text and "coredns" not in text
    is_error, text = call(cfg, "argocd_resource_tree", name="kube-dns-addon")
    assert is_error and "kubernetes.namespaces" in text
    assert not any("kube-dns-addon/resource-tree" in path for _, path in argo.requests)


def test_resource_tree_shows_crashing_pods_first(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "argocd_resource_tree", name="gateway-core")
    assert text.count("back-off 5m0s restarting failed container=gateway-core") == 3
    assert '"Degraded": 4' in text
    assert text.index('"Degraded"') < text.index('"Healthy"')
    assert "gateway-core-7d9f8b6c5" in text


def test_unknown_app_and_bad_name(servers: tuple[ReplayServer, ReplayServer]) -> None:
    is_error, text = call(config(servers), "argocd_app", name="nope")
    assert is_error and "not found" in text
    is_error, text = call(config(servers), "argocd_app", name="../applications")
    assert is_error and "must be an ArgoCD application name" in text


def test_build_runs(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "build_runs", repo=GC)
    failed = text[text.index('"run_number": 513') : text.index('"run_number": 512')]
    assert '"conclusion": "failure"' in failed and "c4e91d0" in failed and "Bound routing cache" in failed
    passed = text[text.index('"run_number": 512') :]
    assert '"conclusion": "success"' in passed and "9f3c2ab" in passed


def test_build_logs_of_the_failed_run_are_masked(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "build_logs", repo=GC, run_id=2190)
    assert '"job_id": 4389' in text and '"failed_steps": ["go test"]' in text
    assert "--- FAIL: TestRoutingCacheEviction" in text
    assert BEARER not in text and BEARER[:16] not in text and "[MASKED:bearer-token]" in text
    assert "2026-12-01T08:53" not in text.split("--- log")[1]  # timestamps stripped


def test_build_logs_accept_the_run_number_too(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "build_logs", repo=GC, run_id=513)
    assert '"run_id": 2190' in text and "--- FAIL: TestRoutingCacheEviction" in text and BEARER not in text
    is_error, text = call(config(servers), "build_logs", repo=GC, run_id=999)
    assert is_error and "no run with id or number 999" in text


def test_build_logs_by_job_and_tail(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "build_logs", repo=GC, job_id=4389, tail=5)
    log = text.split("--- log (last lines) ---\n")[1]
    assert len(log.splitlines()) == 5 and "TestRoutingCacheEviction" not in log
    assert '"lines_before_tail": 0' not in text


def test_builds_of_a_repo_outside_the_allowlist_are_refused_without_a_request(servers: tuple[ReplayServer, ReplayServer]) -> None:
    git = servers[0]
    for cfg, key in ((config(servers), "gitea.repos.allow"), (config(servers, repos={"allow": ["risk/*"]}), "cicd.repos")):
        for name, args in (("build_runs", {"repo": "hr/payroll"}), ("build_logs", {"repo": "hr/payroll", "job_id": 1})):
            before = len(git.requests)
            is_error, text = call(cfg, name, **args)
            assert is_error and key in text, text
            assert len(git.requests) == before
    is_error, text = call(config(servers, repos={"allow": ["risk/*"]}), "build_runs", repo=GC)
    assert is_error and "cicd.repos" in text


def test_output_is_capped(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers, max_output_chars=400), "argocd_resource_tree", name="gateway-core")
    assert "[cut:" in text and len(text) < 500


def test_only_get_requests_reached_the_servers(servers: tuple[ReplayServer, ReplayServer]) -> None:
    ok(config(servers), "argocd_apps")
    ok(config(servers), "build_runs", repo=GC)
    for server in servers:
        assert server.requests and all(method == "GET" for method, _ in server.requests)
    assert not any("refresh" in path for _, path in servers[1].requests)


def test_stdio_server_lists_read_only_tools_and_answers(servers: tuple[ReplayServer, ReplayServer], tmp_path: Path) -> None:
    cfg_file = tmp_path / "connectors.yaml"
    cfg_file.write_text(yaml.safe_dump(settings(*servers)))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "connectors", "cicd", "--config", str(cfg_file)], cwd=str(ROOT)
    )

    async def run() -> tuple[list[Any], str]:
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
            result = await client.call_tool("argocd_app", {"name": "gateway-core"})
            return tools, "\n".join(c.text for c in result.content if hasattr(c, "text"))

    tools, text = asyncio.run(run())
    assert {t.name for t in tools} == ARGO_TOOLS | BUILD_TOOLS
    assert all(t.annotations and t.annotations.read_only_hint for t in tools)
    assert "9f3c2ab" in text and "Degraded" in text


def test_build_logs_without_ids_read_the_newest_failed_run(servers: tuple[ReplayServer, ReplayServer]) -> None:
    text = ok(config(servers), "build_logs", repo="payments/gateway-core")
    assert "TestRoutingCacheEviction" in text and '"run_number": 513' in text
