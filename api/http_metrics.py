"""Request-level Prometheus metrics: a pure ASGI middleware counting every HTTP response by method, route and
status, and timing it per route, on api/metrics.py's registry (served at /metrics).

The route label is the matched route's path template (`/v1/sessions/{session_id}`), never the raw path, so a
client cannot grow the number of series; requests no route handled (404, or refused by a middleware before
routing) share one label. /metrics itself is not counted: Prometheus' own scrapes would drown the rest."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REGISTRY

UNMATCHED = "unmatched"
EXCLUDED_ROUTES = frozenset({"/metrics"})
# Bounded like the route: any other verb a client invents is counted as one value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Edges at the alert thresholds (p95 over 5 s and 10 s) so histogram_quantile interpolates within a bucket there.
BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)

HTTP_REQUESTS = Counter("kb_http_requests_total", "HTTP responses by method, route template and status code.",
                        ["method", "route", "status"], registry=REGISTRY)  # fmt: skip
HTTP_DURATION = Histogram("kb_http_request_duration_seconds", "Time from request to the last byte of the response, by route.",
                          ["route"], buckets=BUCKETS_S, registry=REGISTRY)  # fmt: skip


def route_template(scope: Scope) -> str:
    """The path template of the route that handled the request (Starlette and FastAPI put it in the scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class HTTPMetrics:
    """Counts and times each HTTP request; an exception before the response started counts as the 500 that
    Starlette's outermost error middleware then sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router writes the matched route into this same scope dict, so it is known only now.
            route = route_template(scope)
            if route not in EXCLUDED_ROUTES:
                method = scope["method"] if scope["method"] in METHODS else "other"
                HTTP_REQUESTS.labels(method, route, str(status)).inc()
                HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
