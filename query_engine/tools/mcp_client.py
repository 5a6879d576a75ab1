"""MCP clients for the configured connectors, loaded as LlamaIndex tools through llama-index-tools-mcp.

`BasicMCPClient` opens a new session for every call, which for a stdio server means a new process per
tool call. `PersistentMCPClient` keeps one session per server for the client's life: a background task
owns the session's context (anyio needs it entered and left in one task) and calls share it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.tools import FunctionTool
from llama_index.tools.mcp import BasicMCPClient, McpToolSpec
from mcp import ClientSession

from connectors.config import ConnectorsConfig, ExternalServerConfig
from query_engine.tools.guard import ToolFailed


class PersistentMCPClient(BasicMCPClient):
    """A BasicMCPClient whose every call goes through one long-lived session."""

    _session: ClientSession | None = None
    _owner: asyncio.Task[None] | None = None
    _stop: asyncio.Event | None = None

    async def start(self, timeout: float = 60) -> None:
        ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()

        async def own() -> None:
            try:
                async with super(PersistentMCPClient, self)._run_session() as session:
                    ready.set_result(session)
                    assert self._stop is not None
                    await self._stop.wait()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                raise

        self._owner = asyncio.create_task(own())
        self._session = await asyncio.wait_for(ready, timeout)

    @asynccontextmanager
    async def _run_session(self) -> AsyncIterator[ClientSession]:
        if self._session is None:
            raise RuntimeError(f"MCP client for {self.command_or_url} is not started")
        yield self._session

    async def aclose(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._owner is not None:
            try:
                await asyncio.wait_for(self._owner, 10)
            except (TimeoutError, Exception):  # the server may already be gone; closing must not fail
                self._owner.cancel()
        self._session = None


@dataclass
class ConnectorTool:
    """A tool of one connector, with its MCP input schema for constrained tool choice."""

    connector: str
    tool: FunctionTool

    @property
    def name(self) -> str:
        return self.tool.metadata.name

    @property
    def qualified(self) -> str:
        return f"{self.connector}.{self.name}"

    @property
    def description(self) -> str:
        return self.tool.metadata.description

    def parameters(self) -> dict[str, Any]:
        return self.tool.metadata.get_parameters_dict()

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Call the tool over MCP; an error result raises ToolFailed with the server's message."""
        result = (await self.tool.acall(**arguments)).raw_output
        text = "\n".join(getattr(block, "text", "") for block in getattr(result, "content", []) or [])
        if getattr(result, "is_error", False) or getattr(result, "isError", False):
            refused = "allowlist" in text or text.startswith("refused")
            raise ToolFailed(text.strip() or "the tool failed", refused=refused)
        return text


def _expand(value: str) -> str:
    return os.path.expandvars(value)


def server_client(name: str, config: ConnectorsConfig, config_file: Path | None) -> PersistentMCPClient:
    """Our connectors run as `python -m connectors NAME` over stdio; external servers as configured."""
    cfg = config.get(name)
    if isinstance(cfg, ExternalServerConfig):
        if cfg.mcp_url:
            return PersistentMCPClient(cfg.mcp_url, timeout=int(cfg.timeout_seconds))
        command = cfg.mcp_command or []
        env = {**_base_env(), **{k: _expand(v) for k, v in cfg.env.items()}}
        return PersistentMCPClient(command[0], args=command[1:], env=env, timeout=int(cfg.timeout_seconds))
    args = ["-m", "connectors", name] + (["--config", str(config_file)] if config_file else [])
    env = _base_env()
    for var in (cfg.token_env, getattr(cfg, "argocd_token_env", None)):
        if var and var in os.environ:  # the token goes to the one server that needs it, by name
            env[var] = os.environ[var]
    return PersistentMCPClient(sys.executable, args=args, env=env, timeout=int(cfg.timeout_seconds) + 5)


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "HF_HUB_OFFLINE", "DO_NOT_TRACK", "KB_CONNECTORS_FILE")
    return {k: os.environ[k] for k in keep if k in os.environ}


class ConnectorClients:
    """One persistent MCP session per enabled connector (docs excluded: the agent searches in-process)."""

    def __init__(self, config: ConnectorsConfig, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file
        self.clients: dict[str, PersistentMCPClient] = {}
        self.tools: list[ConnectorTool] = []
        self.failed: dict[str, str] = {}

    async def start(self) -> ConnectorClients:
        """Start every live connector; one that fails to start is reported, the others still serve."""

        async def start_one(name: str) -> None:
            client = server_client(name, self.config, self.config_file)
            try:
                await client.start()
                allowed = getattr(self.config.get(name), "allowed_tools", None)
                listed = await McpToolSpec(client, allowed_tools=allowed).to_tool_list_async()
            except Exception as exc:
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                await client.aclose()
                return
            self.clients[name] = client
            self.tools.extend(ConnectorTool(name, tool) for tool in listed)

        await asyncio.gather(*(start_one(n) for n in self.config.live()))
        order = {n: i for i, n in enumerate(self.config.live())}
        self.tools.sort(key=lambda t: (order[t.connector], t.name))
        return self

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))
        self.clients.clear()
