"""The HTTP API: OpenAI-compatible chat, query, sessions, webhooks, health, metrics and a web chat page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from mcp.server.transport_security import TransportSecuritySettings
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Caller, current_caller
from api.http_metrics import HTTPMetrics
from api.routes import auth, chat, feedback, health, query, sessions, webhooks
from api.state import AppState, build_state, static_dir
from api.validation import InputGuard
from api.validation import error_response as _error
from assets.mask import mask_log_handlers
from connectors.docs import build_kb_server
from kb.observability import configure_logging, install_observability, shutdown_observability
from kb.settings import APISettings
from query_engine.knowledge import EngineKnowledgeBase


def create_app(state: AppState | None = None) -> FastAPI:
    """Build the app; `state` is built from the settings at start-up unless given."""
    if state is None:  # the served app (uvicorn's factory): its first lines ("Started server process") are JSON too
        configure_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()  # JSON lines with request id and user, masked (uvicorn's handlers are set up by now)
        mask_log_handlers()  # any other handler: nothing it logs carries a secret
        app.state.kb = state or build_state()
        await app.state.kb.start_connectors()
        try:
            async with kb_mcp.session_manager.run():
                yield
        finally:
            await app.state.kb.stop_connectors()
            shutdown_observability(app)  # the last spans go out before the process ends

    app = FastAPI(
        title="kb", description="Answers with sources from the team's knowledge base.", version="0.1.0", lifespan=lifespan
    )

    # NUL bytes, integer ranges, body size (Content-Length or chunked) and JSON depth: 4xx before any route runs.
    app.add_middleware(InputGuard, max_body_bytes=lambda: app.state.kb.api.max_request_bytes)

    # Starlette's class: FastAPI's HTTPException is a subclass, and unknown paths (404) and methods (405) raise it.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip
        response = _error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "error"))
        response.headers.update(exc.headers or {})  # WWW-Authenticate on 401, Retry-After on 429
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return _error(422, f"invalid request: {problems}", "invalid_request_error")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    # The web client's modules, styles and vendored libraries (anonymous, like the page: it signs in itself).
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    for module in (auth, chat, query, sessions, feedback, webhooks, health):
        app.include_router(module.router)
    # The knowledge base as an MCP server (streamable HTTP) for IDE agents, next to the HTTP API; each call
    # reads what the request's bearer may read (MCPAuth below signs the request in).
    lazy = LazyKnowledgeBase(app)
    kb_mcp = build_kb_server(lazy, scope_for=lazy.for_request)
    # From the environment, like the state's own APISettings: the state may not be initialised yet at this point.
    security = mcp_transport_security(APISettings())
    app.router.routes.extend(kb_mcp.streamable_http_app(streamable_http_path="/mcp", transport_security=security).routes)
    app.add_middleware(MCPAuth)
    # Outermost: counts every answer, the input guard's and the MCP sign-in's 4xx included.
    app.add_middleware(HTTPMetrics)
    # Request ids (X-Request-ID), the JSON access log and, with an OTLP endpoint, OpenTelemetry traces.
    install_observability(app)
    return app


def mcp_transport_security(settings: APISettings) -> TransportSecuritySettings:
    """The MCP SDK's DNS-rebinding protection (a browser page must not reach /mcp through a name it controls):
    loopback, as the SDK allows by default, plus the names the API is served by behind a proxy."""
    loopback = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = [f"{scheme}://{host}" for host in [*loopback, *settings.allowed_hosts] for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=[*loopback, *settings.allowed_hosts],
                                     allowed_origins=origins)  # fmt: skip


class MCPAuth:
    """Signs in requests to /mcp with the API's own credentials and limits (the MCP routes are plain
    Starlette routes, outside FastAPI's dependencies); the caller rides on the request's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            await current_caller(request, request.app.state.kb)
        except HTTPException as exc:
            kind = {401: "authentication_error", 429: "rate_limit_error"}.get(exc.status_code, "error")
            response = _error(exc.status_code, str(exc.detail), kind)
            response.headers.update(exc.headers or {})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LazyKnowledgeBase:
    """The app's knowledge base, resolved per call: the engine is built in the lifespan, after routes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def _kb(self) -> EngineKnowledgeBase:
        return self.app.state.kb.knowledge  # type: ignore[no-any-return]

    def for_request(self, request: Any) -> EngineKnowledgeBase:
        """The knowledge base as the request's signed-in caller may read it."""
        caller = getattr(getattr(request, "state", None), "caller", None)
        if not isinstance(caller, Caller):
            raise PermissionError("not signed in")
        return self._kb().scoped(caller.access.readable(None), caller.access.groups)

    def collections(self) -> list[dict[str, Any]]:
        return self._kb().collections()

    def search(self, query: str, collections: list[str] | None, filters: dict[str, str | list[str]] | None,
               top_k: int) -> list[dict[str, Any]]:  # fmt: skip
        return self._kb().search(query, collections, filters, top_k)

    def document(self, collection: str, path: str) -> list[dict[str, Any]] | None:
        return self._kb().document(collection, path)
