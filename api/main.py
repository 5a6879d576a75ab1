"""The HTTP API: OpenAI-compatible chat, query, sessions, webhooks, health, metrics and a web chat page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from api.routes import chat, health, query, sessions, webhooks
from api.state import AppState, build_state, static_dir
from connectors.docs import build_kb_server
from query_engine.knowledge import EngineKnowledgeBase


def _error(status: int, message: str, kind: str) -> JSONResponse:
    # OpenAI's error shape, so SDKs surface the message.
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}, "detail": message}, status_code=status)


def create_app(state: AppState | None = None) -> FastAPI:
    """Build the app; `state` is built from the settings at start-up unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.kb = state or build_state()
        await app.state.kb.start_connectors()
        try:
            async with kb_mcp.session_manager.run():
                yield
        finally:
            await app.state.kb.stop_connectors()

    app = FastAPI(
        title="kb", description="Answers with sources from the team's knowledge base.", version="0.1.0", lifespan=lifespan
    )

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        limit = request.app.state.kb.api.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return _error(413, f"request body over {limit} bytes", "request_too_large")
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "service_unavailable"}
        return _error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "error"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return _error(422, f"invalid request: {problems}", "invalid_request_error")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir() / "chat.html")

    for module in (chat, query, sessions, webhooks, health):
        app.include_router(module.router)
    # The knowledge base as an MCP server (streamable HTTP) for IDE agents, next to the HTTP API.
    kb_mcp = build_kb_server(LazyKnowledgeBase(app))
    app.router.routes.extend(kb_mcp.streamable_http_app(streamable_http_path="/mcp").routes)
    return app


class LazyKnowledgeBase:
    """The app's knowledge base, resolved per call: the engine is built in the lifespan, after routes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def _kb(self) -> EngineKnowledgeBase:
        return self.app.state.kb.knowledge  # type: ignore[no-any-return]

    def collections(self) -> list[dict[str, Any]]:
        return self._kb().collections()

    def search(self, query: str, collections: list[str] | None, filters: dict[str, str | list[str]] | None,
               top_k: int) -> list[dict[str, Any]]:  # fmt: skip
        return self._kb().search(query, collections, filters, top_k)

    def document(self, collection: str, path: str) -> list[dict[str, Any]] | None:
        return self._kb().document(collection, path)
