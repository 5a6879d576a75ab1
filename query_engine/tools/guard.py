"""One guard around every tool call, ours and external MCP servers alike.

In order: allowlists on the arguments (whatever the model asks), the TTL cache, the per-connector
rate limit, a timeout, then masking and a size cap on the output; every call is recorded (user,
connector, tool, arguments, outcome, milliseconds, cached) and counted in Prometheus. A connector
gets all of it by being configured; nothing here is per connector but the data in `connectors.yaml`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter, Histogram
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

from connectors.config import AllowDeny, ConnectorConfig, ConnectorsConfig
from connectors.masking import mask_output

Outcome = Literal["ok", "error", "refused", "rate_limited", "timeout"]
Invoke = Callable[[dict[str, Any]], Awaitable[str]]

REGISTRY = CollectorRegistry()
MCP_REQUESTS = Counter("mcp_requests_total", "Tool calls by connector, tool and outcome.", ["connector", "tool", "outcome"],
                       registry=REGISTRY)  # fmt: skip
MCP_DURATION = Histogram("mcp_request_duration_seconds", "Duration of tool calls, cache hits included.", ["connector", "tool"],
                         buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)  # fmt: skip
MCP_CACHE_HITS = Counter("mcp_cache_hits_total", "Tool calls answered from the guard's cache.", ["connector"], registry=REGISTRY)
MCP_CACHE_MISSES = Counter("mcp_cache_misses_total", "Cacheable tool calls that went to the connector.", ["connector"],
                           registry=REGISTRY)  # fmt: skip

# LogQL stream selectors name namespaces as label matchers: {namespace="payments"} or =~"a|b".
_LOGQL_NAMESPACE = re.compile(r"namespace\s*(=~|!=|!~|=)\s*\"([^\"]*)\"")


@dataclass
class ToolCall:
    """One step of an answer: what was called, how it went, and the (masked, capped) output."""

    connector: str
    tool: str
    arguments: dict[str, Any]
    outcome: Outcome
    ms: float
    cached: bool = False
    output: str = ""
    user: str = "anonymous"

    def step(self) -> dict[str, Any]:
        """The public shape of a step (the `steps` field of a chat response)."""
        return {"connector": self.connector, "tool": self.tool, "arguments": self.arguments, "outcome": self.outcome,
                "ms": self.ms, "cached": self.cached}  # fmt: skip


class CallLog(Protocol):
    def record(self, call: ToolCall) -> None: ...


@dataclass
class MemoryCallLog:
    """Keeps calls in a list: for tests and single-process tools without a database."""

    calls: list[ToolCall] = field(default_factory=list)

    def record(self, call: ToolCall) -> None:
        self.calls.append(call)


class PostgresCallLog:
    """Appends every call to `kb_tool_calls` (created by the Alembic migrations)."""

    def __init__(self, database_url: str) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(database_url, min_size=1, max_size=4, open=True)

    def record(self, call: ToolCall) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO kb_tool_calls (user_name, connector, tool, arguments, outcome, ms, cached, output_chars)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (call.user, call.connector, call.tool, json.dumps(call.arguments, ensure_ascii=False), call.outcome, call.ms,
                 call.cached, len(call.output)),
            )  # fmt: skip

    def close(self) -> None:
        self.pool.close()


@dataclass
class _Policy:
    config: ConnectorConfig
    limiter: Limiter
    cache: TTLCache[str, str] | None
    arguments: dict[str, AllowDeny]


def argument_rules(config: ConnectorsConfig, connector: str) -> dict[str, AllowDeny]:
    """Which argument of which connector must pass which allowlist, checked before any call."""
    if connector in config.external:
        return dict(config.external[connector].arguments)
    rules: dict[str, dict[str, AllowDeny]] = {
        "kubernetes": {"namespace": config.kubernetes.namespaces},
        "loki": {"namespace": config.loki_namespaces(), "logql": config.loki_namespaces()},
        "gitea": {"repo": config.gitea.repos},
        "cicd": {"repo": config.cicd.repos or config.gitea.repos},
    }
    return rules.get(connector, {})


def _values_to_check(argument: str, value: Any) -> list[str]:
    if argument == "logql":
        found = _LOGQL_NAMESPACE.findall(str(value))
        # A selector must name its namespaces literally; a negative or wildcard matcher could reach any of them.
        return [v for op, raw in found for v in (raw.split("|") if op == "=~" else [raw if op == "=" else "*"])] or ["*"]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class Guard:
    """Applies the policy of `connectors.yaml` to every tool call; `log` records each call."""

    def __init__(self, config: ConnectorsConfig, log: CallLog | None = None) -> None:
        self.config = config
        self.log = log or MemoryCallLog()
        self._policies: dict[str, _Policy] = {}

    def _policy(self, connector: str) -> _Policy:
        if connector not in self._policies:
            cfg = self.config.get(connector)
            cache = TTLCache(maxsize=1024, ttl=cfg.cache_ttl_seconds) if cfg.cache_ttl_seconds > 0 else None
            limiter = Limiter(InMemoryBucket([Rate(cfg.rate_limit_per_minute, Duration.MINUTE)]))
            self._policies[connector] = _Policy(cfg, limiter, cache, argument_rules(self.config, connector))
        return self._policies[connector]

    def argument_lists(self, connector: str) -> dict[str, AllowDeny]:
        return self._policy(connector).arguments

    def refusal(self, connector: str, arguments: dict[str, Any]) -> str | None:
        """Why the allowlists refuse these arguments, or None."""
        for argument, lists in self._policy(connector).arguments.items():
            if arguments.get(argument) in (None, ""):
                continue
            for value in _values_to_check(argument, arguments[argument]):
                if not lists.permits(value):
                    return f"{argument} {value!r} is outside the {connector} allowlist; nothing was requested"
        return None

    async def call(
        self, connector: str, tool: str, arguments: dict[str, Any], invoke: Invoke, user: str = "anonymous"
    ) -> ToolCall:
        """Run `invoke(arguments)` under the connector's policy; never raises for the tool's own failures."""
        started = time.perf_counter()
        policy = self._policy(connector)
        arguments = _masked(arguments)
        key = f"{tool}\x00{json.dumps(arguments, sort_keys=True, ensure_ascii=False)}"
        outcome: Outcome
        cached = False
        refused = self.refusal(connector, arguments)
        if refused:
            outcome, output = "refused", f"refused: {refused}"
        elif policy.cache is not None and key in policy.cache:
            outcome, output, cached = "ok", policy.cache[key], True
        elif not policy.limiter.try_acquire(connector, blocking=False):
            limit = policy.config.rate_limit_per_minute
            outcome, output = "rate_limited", f"rate limited: {connector} allows {limit} calls a minute; try again shortly"
        else:
            outcome, output = await self._invoke(invoke, arguments, policy.config.timeout_seconds)
            output = _cap(mask_output(output), policy.config.max_output_chars)
            if policy.cache is not None:
                MCP_CACHE_MISSES.labels(connector).inc()
                if outcome == "ok":
                    policy.cache[key] = output
        if cached:
            MCP_CACHE_HITS.labels(connector).inc()
        call = ToolCall(
            connector, tool, arguments, outcome, round((time.perf_counter() - started) * 1000, 2), cached, output, user
        )
        MCP_REQUESTS.labels(connector, tool, outcome).inc()
        MCP_DURATION.labels(connector, tool).observe(call.ms / 1000)
        await self._record(call)
        return call

    async def _invoke(self, invoke: Invoke, arguments: dict[str, Any], timeout: float) -> tuple[Outcome, str]:
        try:
            return "ok", await asyncio.wait_for(invoke(arguments), timeout)
        except TimeoutError:
            return "timeout", f"timed out after {timeout:g}s"
        except ToolFailed as exc:
            return ("refused" if exc.refused else "error"), f"error: {exc}"
        except Exception as exc:  # a connector's failure is the model's information, not the request's end
            return "error", f"error: {type(exc).__name__}: {exc}"

    async def _record(self, call: ToolCall) -> None:
        try:
            await asyncio.to_thread(self.log.record, call)
        except Exception as exc:  # the answer goes on; the failure to record is logged loudly
            logging.getLogger(__name__).error("could not record tool call %s", {**asdict(call), "output": None}, exc_info=exc)


class ToolFailed(RuntimeError):
    """The MCP server answered the call with an error result; `refused` when its allowlist said no."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def _masked(value: Any) -> Any:
    """Arguments as recorded and cached: every string masked (a user may paste a token into a question)."""
    if isinstance(value, dict):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return mask_output(value) if isinstance(value, str) else value


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[cut by the guard: {len(text) - max_chars} more characters]"
