"""The knowledge base as an MCP server: hybrid search with collection and metadata filters, a document
by path, the runbook for an alert or a system, and the list of collections.

The search itself belongs to the query engine, which connectors know nothing of: the server is built
around a `KnowledgeBase` that the caller passes in (`query_engine.knowledge.EngineKnowledgeBase`).
`kb mcp` serves it over stdio and the API at `/mcp` over streamable HTTP, for IDE agents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from connectors.base import READ_ONLY, new_server, render
from connectors.config import DocsConfig


class KnowledgeBase(Protocol):
    def collections(self) -> list[dict[str, Any]]: ...

    def search(self, query: str, collections: list[str] | None, filters: dict[str, str | list[str]] | None,
               top_k: int) -> list[dict[str, Any]]: ...  # fmt: skip

    def document(self, collection: str, path: str) -> list[dict[str, Any]] | None: ...


# Over HTTP, the knowledge base as the signed-in caller of this request may read it (the transport's
# request is passed in: `ctx.request_context.request`); over stdio, the one the server was built with.
ScopeFor = Callable[[Any], KnowledgeBase]


def build_kb_server(kb: KnowledgeBase, config: DocsConfig | None = None, scope_for: ScopeFor | None = None) -> MCPServer:
    """An MCPServer over `kb`; every output masked and capped at the docs connector's `max_output_chars`.
    With `scope_for`, each tool call reads `scope_for(http_request)` instead, so a caller sees only the
    collections and documents their roles allow."""
    cap = (config or DocsConfig()).max_output_chars
    server = new_server("docs", "Search the team's knowledge base: docs, code, incidents, Kubernetes manifests, runbooks.")

    def base(ctx: Context | None) -> KnowledgeBase:
        if scope_for is None:
            return kb
        try:
            return scope_for(ctx.request_context.request if ctx is not None else None)
        except PermissionError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool(annotations=READ_ONLY)
    def search(
        query: Annotated[str, Field(description="What to look for, in any language (English, Russian, Chinese).")],
        collections: Annotated[list[str] | None, Field(description="Only these collections; empty: all.")] = None,
        filters: Annotated[
            dict[str, str | list[str]] | None, Field(description='Metadata filters such as {"namespace": "payments"}.')
        ] = None,
        top_k: Annotated[int, Field(ge=1, le=20, description="How many passages.")] = 5,
        ctx: Context | None = None,
    ) -> str:
        """Search the knowledge base (how things work, how we fixed this before): the best passages with their
        collection, path and section."""
        try:
            return render(base(ctx).search(query, collections or None, filters or None, top_k), cap)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc

    @server.tool(annotations=READ_ONLY)
    def get_document(
        collection: Annotated[str, Field(description="The collection, e.g. runbooks.")],
        path: Annotated[str, Field(description="The document's path in its collection, as search returns it.")],
        ctx: Context | None = None,
    ) -> str:
        """One indexed document, whole (masked), by collection and path."""
        chunks = base(ctx).document(collection, path)
        if chunks is None:
            raise ToolError(f"{collection}/{path} is not indexed")
        return render("\n\n".join(c["text"] for c in chunks), cap)

    @server.tool(annotations=READ_ONLY)
    def runbook(
        subject: Annotated[str, Field(description="An alert name (GatewayHighErrorRate) or a system (redis, kafka).")],
        ctx: Context | None = None,
    ) -> str:
        """The runbook for an alert or a system: the step-by-step procedure the team follows."""
        scoped = base(ctx)
        names = {c["name"] for c in scoped.collections()}
        try:
            hits = scoped.search(f"runbook {subject}", ["runbooks"] if "runbooks" in names else None, None, 3)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        return render(hits, cap)

    @server.tool(annotations=READ_ONLY)
    def list_collections(ctx: Context | None = None) -> str:
        """The collections of the knowledge base with what each holds."""
        return render(base(ctx).collections(), cap)

    return server
