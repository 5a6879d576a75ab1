"""The pieces every connector server is built from: a read-only MCPServer, refusals, trimmed output."""

from __future__ import annotations

import json
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from connectors.config import AllowDeny
from connectors.masking import mask_output

# Every tool a connector registers carries this hint: kubernetes-mcp-server and gitea-mcp use the
# same hint to filter in read-only mode; here no tool exists without it.
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)


class Refused(ToolError):
    """A request the allowlists do not permit; the message says which list and how to change it."""


def new_server(name: str, instructions: str) -> MCPServer:
    return MCPServer(name=f"kb-{name}", instructions=instructions, log_level="WARNING")


def check_allowed(lists: AllowDeny, kind: str, name: str, config_key: str) -> None:
    """Raise `Refused` unless `name` passes `lists` (deny wins; nothing is allowed by default)."""
    if not lists.permits(name):
        raise Refused(f"{kind} {name!r} is outside this connector's allowlist ({config_key}); nothing was read")


def render(data: Any, max_chars: int) -> str:
    """JSON (or text) for the model, masked, cut at `max_chars` with a note of what was cut."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, indent=1, default=str)
    text = mask_output(text)
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[cut: {len(text) - max_chars} more characters; narrow the query]"
