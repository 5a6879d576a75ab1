"""The guard around every tool call: allowlists, cache, rate limit, timeout, masking, size cap, records."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors.config import parse_connectors
from query_engine.tools.guard import MCP_REQUESTS, Guard, MemoryCallLog

CONFIG = parse_connectors(
    {
        "kubernetes": {"url": "http://k8s", "rate_limit_per_minute": 3, "cache_ttl_seconds": 60, "timeout_seconds": 0.2,
                       "namespaces": {"allow": ["payments", "risk"], "deny": ["kube-system"]}},
        "loki": {"url": "http://loki", "max_output_chars": 300},
        "gitea": {"url": "http://gitea", "repos": {"allow": ["payments/*"]}},
        "grafana": {"mcp_url": "http://127.0.0.1:1/mcp", "arguments": {"datasource": {"allow": ["loki-prod"]}}},
    }
)  # fmt: skip


class Recorder:
    def __init__(self, output: str = "ok", delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.output, self.delay, self.fail = output, delay, fail

    async def __call__(self, arguments: dict[str, Any]) -> str:
        self.calls.append(arguments)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("upstream broke")
        return self.output


def call(guard: Guard, connector: str, tool: str, arguments: dict[str, Any], invoke: Recorder):  # type: ignore[no-untyped-def]
    return asyncio.run(guard.call(connector, tool, arguments, invoke, user="alice"))


def test_denied_namespace_is_refused_before_any_call() -> None:
    guard, invoke = Guard(CONFIG), Recorder()
    for namespace in ("kube-system", "billing"):
        result = call(guard, "kubernetes", "list_pods", {"namespace": namespace}, invoke)
        assert result.outcome == "refused" and namespace in result.output
    assert invoke.calls == []


def test_logql_selectors_must_name_allowed_namespaces() -> None:
    guard, invoke = Guard(CONFIG), Recorder()
    refused = [
        '{namespace="kube-system"}',
        '{app="x"}',
        '{namespace=~".*"}',
        '{namespace!="payments"}',
        '{namespace=~"payments|kube-system"}',
    ]
    for logql in refused:
        assert call(guard, "loki", "query_logs", {"logql": logql}, invoke).outcome == "refused", logql
    assert invoke.calls == []
    assert call(guard, "loki", "query_logs", {"logql": '{namespace=~"payments|risk"} |= "error"'}, invoke).outcome == "ok"


def test_repository_allowlist_and_external_argument_lists() -> None:
    guard, invoke = Guard(CONFIG), Recorder()
    assert call(guard, "gitea", "get_file", {"repo": "hr/payroll", "path": "a"}, invoke).outcome == "refused"
    assert call(guard, "gitea", "get_file", {"repo": "payments/gateway-core", "path": "a"}, invoke).outcome == "ok"
    assert call(guard, "grafana", "query", {"datasource": "loki-kube-system"}, invoke).outcome == "refused"
    assert len(invoke.calls) == 1


def test_results_are_cached_within_the_ttl_and_errors_are_not() -> None:
    guard, invoke = Guard(CONFIG), Recorder("pods: 6")
    first = call(guard, "kubernetes", "list_pods", {"namespace": "payments"}, invoke)
    second = call(guard, "kubernetes", "list_pods", {"namespace": "payments"}, invoke)
    assert (first.cached, second.cached) == (False, True) and second.output == "pods: 6" and len(invoke.calls) == 1
    failing = Recorder(fail=True)
    for _ in range(2):
        assert call(guard, "kubernetes", "events", {"namespace": "risk"}, failing).outcome == "error"
    assert len(failing.calls) == 2


def test_rate_limit_refuses_calls_over_the_limit_without_calling() -> None:
    guard, invoke = Guard(CONFIG), Recorder()
    outcomes = [call(guard, "kubernetes", "list_pods", {"namespace": "payments", "label_selector": f"app={i}"}, invoke).outcome
                for i in range(5)]  # fmt: skip
    assert outcomes == ["ok", "ok", "ok", "rate_limited", "rate_limited"]
    assert len(invoke.calls) == 3


def test_slow_calls_time_out_and_failures_become_outcomes() -> None:
    guard = Guard(CONFIG)
    assert call(guard, "kubernetes", "list_pods", {"namespace": "risk"}, Recorder(delay=1.0)).outcome == "timeout"
    broken = call(guard, "gitea", "list_repos", {}, Recorder(fail=True))
    assert broken.outcome == "error" and "upstream broke" in broken.output


def test_outputs_and_arguments_are_masked_and_capped() -> None:
    log = MemoryCallLog()
    guard = Guard(CONFIG, log)
    secret_output = 'DB_PASSWORD=hunter2hunter2 {"name": "ACQUIRER_API_KEY", "value": "ak_live_93jf83"} password=Sup3rS3cret!2026'
    result = call(
        guard, "kubernetes", "describe", {"namespace": "payments", "name": "token=abcdefabcdef12"}, Recorder(secret_output)
    )
    for secret in ("hunter2hunter2", "ak_live_93jf83", "Sup3rS3cret!2026"):
        assert secret not in result.output
    assert "abcdefabcdef12" not in str(log.calls[0].arguments)
    long = call(guard, "loki", "query_logs", {"logql": '{namespace="payments"}'}, Recorder("x" * 1000))
    assert len(long.output) < 400 and "cut by the guard" in long.output


def test_every_call_is_recorded_and_counted() -> None:
    log = MemoryCallLog()
    guard = Guard(CONFIG, log)
    before = MCP_REQUESTS.labels("kubernetes", "list_pods", "refused")._value.get()
    call(guard, "kubernetes", "list_pods", {"namespace": "kube-system"}, Recorder())
    call(guard, "gitea", "list_repos", {}, Recorder())
    assert [(c.user, c.connector, c.tool, c.outcome) for c in log.calls] == [
        ("alice", "kubernetes", "list_pods", "refused"), ("alice", "gitea", "list_repos", "ok")]  # fmt: skip
    assert all(c.ms >= 0 for c in log.calls)
    assert MCP_REQUESTS.labels("kubernetes", "list_pods", "refused")._value.get() == before + 1
