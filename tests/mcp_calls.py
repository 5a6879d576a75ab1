"""One tool call through the real MCP client against an in-memory server: (is_error, text)."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp import Client
from mcp.server import MCPServer


def call_tool(server: MCPServer, name: str, args: dict[str, Any]) -> tuple[bool, str]:
    async def run() -> tuple[bool, str]:
        async with Client(server) as client:
            result = await client.call_tool(name, args)
        return bool(result.is_error), "\n".join(c.text for c in result.content if hasattr(c, "text"))

    return asyncio.run(run())
