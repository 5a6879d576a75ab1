"""The gitea connector against the recorded Gitea API (a real HTTP replay server on loopback), through a real MCP client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters

from connectors import gitea
from connectors.config import ConnectorsConfig, parse_connectors
from kb.replay.server import ReplayServer
from tests.mcp_calls import call_tool

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "examples" / "live_systems" / "gitea"
GC = "payments/gateway-core"
ALLOW = ["payments/*", "risk/*", "admin/k3s-gitops"]


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer("gitea", RECORDED) as server:
        yield server


def config(url: str, allow: list[str] | None = None, **extra: Any) -> ConnectorsConfig:
    return parse_connectors({"gitea": {"url": url, "repos": {"allow": ALLOW if allow is None else allow}, **extra}})


def call(cfg: ConnectorsConfig, name: str, /, **args: Any) -> tuple[bool, str]:
    return call_tool(gitea.build_server(cfg), name, args)


def ok(cfg: ConnectorsConfig, name: str, /, **args: Any) -> str:
    is_error, text = call(cfg, name, **args)
    assert not is_error, text
    return text


def test_tools_are_the_six_read_only_ones(replay: ReplayServer) -> None:
    async def tools() -> list[Any]:
        async with Client(gitea.build_server(config(replay.url))) as client:
            return (await client.list_tools()).tools

    listed = asyncio.run(tools())
    assert {t.name for t in listed} == {"list_repos", "get_file", "search_code", "commit_history", "pull_requests", "compare"}
    assert all(t.annotations and t.annotations.read_only_hint and not t.annotations.destructive_hint for t in listed)
    assert all(t.description for t in listed)


def test_list_repos_shows_only_allowed_and_counts_hidden(replay: ReplayServer) -> None:
    text = ok(config(replay.url), "list_repos")
    for repo in (GC, "payments/ledger-service", "risk/fraud-scoring", "admin/k3s-gitops"):
        assert repo in text
    assert "hr/payroll" not in text and "Payroll" not in text
    assert "1 repositories outside gitea.repos.allow" in text


def test_get_file_shows_the_unbounded_map_at_main_and_not_at_the_old_tag(replay: ReplayServer) -> None:
    cfg = config(replay.url)
    main = ok(cfg, "get_file", repo=GC, path="internal/routing/cache.go")
    assert "entries map[string]*Table" in main and "unbounded" in main and "routing cache grew" in main
    old = ok(cfg, "get_file", repo=GC, path="internal/routing/cache.go", ref="v2.41.0")
    assert "func (c *routingCache) Get" in old and "map[string]" not in old
    values = ok(cfg, "get_file", repo="admin/k3s-gitops", path="apps/payments/gateway-core/values.yaml")
    assert 'tag: "2.42.0"' in values and "memory: 1Gi" in values


def test_get_file_missing_is_a_clear_error(replay: ReplayServer) -> None:
    is_error, text = call(config(replay.url), "get_file", repo=GC, path="internal/nope.go")
    assert is_error and "not found" in text


def test_search_code_greps_the_tree(replay: ReplayServer) -> None:
    text = ok(config(replay.url), "search_code", repo=GC, query="map[string]*Table")
    assert "internal/routing/cache.go:14:" in text
    old = ok(config(replay.url), "search_code", repo=GC, query="map[string]*Table", ref="v2.41.0")
    assert "cache.go" not in old
    assert any("/git/trees/main" in path for _, path in replay.requests)


def test_commit_history_newest_first_and_filtered_by_path(replay: ReplayServer) -> None:
    cfg = config(replay.url)
    text = ok(cfg, "commit_history", repo=GC, limit=3)
    assert text.index("9f3c2ab") < text.index("5b7e2d9") < text.index("a83f1c6")
    assert "Cache acquirer routing tables per merchant (#318)" in text and "a.petrova" in text and "2026-11-30" in text
    assert "41c07d1" not in text  # limit 3
    by_path = ok(cfg, "commit_history", repo=GC, path="internal/routing/cache.go")
    assert "9f3c2ab" in by_path and "2d90be4" in by_path and "5b7e2d9" not in by_path
    at_tag = ok(cfg, "commit_history", repo=GC, ref="v2.41.0")
    assert "41c07d1" in at_tag and "9f3c2ab" not in at_tag


def test_pull_requests_by_state(replay: ReplayServer) -> None:
    cfg = config(replay.url)
    open_prs = ok(cfg, "pull_requests", repo=GC)
    assert "321" in open_prs and "Bound routing cache with LRU (10k entries)" in open_prs and "d.chen" in open_prs
    assert "318" not in open_prs
    closed = ok(cfg, "pull_requests", repo=GC, state="closed")
    assert '"number": 318' in closed and '"merged": true' in closed and "2026-11-30" in closed
    is_error, text = call(cfg, "pull_requests", repo=GC, state="merged")
    assert is_error and "open, closed or all" in text


def test_compare_tags_shows_cache_go_changed(replay: ReplayServer) -> None:
    text = ok(config(replay.url), "compare", repo=GC, base="v2.41.0", head="v2.42.0")
    assert '"total_commits": 3' in text
    assert "9f3c2ab" in text and "41c07d1" not in text
    assert '"file": "internal/routing/cache.go"' in text


def test_repo_outside_allowlist_is_refused_before_any_request(replay: ReplayServer) -> None:
    cfg = config(replay.url)
    calls = [
        ("get_file", {"repo": "hr/payroll", "path": "README.md"}),
        ("search_code", {"repo": "hr/payroll", "query": "payroll"}),
        ("commit_history", {"repo": "hr/payroll"}),
        ("pull_requests", {"repo": "hr/payroll"}),
        ("compare", {"repo": "hr/payroll", "base": "main", "head": "main"}),
    ]
    for name, args in calls:
        before = len(replay.requests)
        is_error, text = call(cfg, name, **args)
        assert is_error and "gitea.repos.allow" in text and "hr/payroll" in text, (name, text)
        assert len(replay.requests) == before, f"{name} sent a request for a refused repository"


def test_empty_allow_list_allows_nothing(replay: ReplayServer) -> None:
    cfg = config(replay.url, allow=[])
    before = len(replay.requests)
    is_error, text = call(cfg, "get_file", repo=GC, path="README.md")
    assert is_error and "gitea.repos.allow" in text and len(replay.requests) == before
    assert '"count": 0' in ok(cfg, "list_repos")


@pytest.mark.parametrize(
    "args",
    [
        {"repo": GC, "path": "../../etc/passwd"},
        {"repo": GC, "path": "/etc/passwd"},
        {"repo": GC, "path": "internal/../../hr/payroll/README.md"},
        {"repo": GC, "path": "README.md?ref=main&x=1"},
        {"repo": GC, "path": "README.md", "ref": "main..v2.41.0"},
        {"repo": GC, "path": "README.md", "ref": "main&sha=x"},
        {"repo": "payments/../hr/payroll", "path": "README.md"},
        {"repo": "payments", "path": "README.md"},
    ],
)
def test_bad_paths_refs_and_repos_are_refused_without_a_request(replay: ReplayServer, args: dict[str, str]) -> None:
    before = len(replay.requests)
    is_error, text = call(config(replay.url), "get_file", **args)
    assert is_error and "must" in text, text
    assert len(replay.requests) == before


def test_output_is_capped(replay: ReplayServer) -> None:
    text = ok(config(replay.url, max_output_chars=300), "get_file", repo=GC, path="internal/routing/cache.go")
    assert "[cut:" in text and len(text) < 400


def test_only_get_requests_reached_the_server(replay: ReplayServer) -> None:
    ok(config(replay.url), "list_repos")
    assert replay.requests and all(method == "GET" for method, _ in replay.requests)


def test_stdio_server_lists_read_only_tools_and_answers(replay: ReplayServer, tmp_path: Path) -> None:
    cfg_file = tmp_path / "connectors.yaml"
    cfg_file.write_text(yaml.safe_dump({"gitea": {"url": replay.url, "repos": {"allow": ALLOW}}}))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "connectors", "gitea", "--config", str(cfg_file)], cwd=str(ROOT)
    )

    async def run() -> tuple[list[Any], str]:
        async with Client(params) as client:
            tools = (await client.list_tools()).tools
            result = await client.call_tool("pull_requests", {"repo": GC})
            return tools, "\n".join(c.text for c in result.content if hasattr(c, "text"))

    tools, text = asyncio.run(run())
    assert len(tools) == 6 and all(t.annotations and t.annotations.read_only_hint for t in tools)
    assert "Bound routing cache with LRU (10k entries)" in text


def test_token_goes_in_giteas_own_header() -> None:
    client = gitea.gitea_client("http://127.0.0.1:1", "s3cr3t-token", 1.0)
    assert client._http.headers["Authorization"] == "token s3cr3t-token"
    assert "Authorization" not in gitea.gitea_client("http://127.0.0.1:1", None, 1.0)._http.headers
