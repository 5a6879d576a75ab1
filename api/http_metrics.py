"""Request-level Prometheus metrics: a pure ASGI middleware counting every HTTP response by method, route and
status, and timing it per route, on api/metrics.py's registry (served at /metrics).

The route label is the matched route's path template (`/v1/sessions/{session_id}`), never the raw path, so a
client cannot grow the number of series; requests no route handled (404, or refused by a middleware before
routing) share one label. /metrics itself is not counted: Prometheus' own scrapes would drown the rest."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from starlette.types import Scope

from api.metrics import REGISTRY
from kb.observability import ResponseObserver

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


class HTTPMetrics(ResponseObserver):
    """Counts and times each HTTP request."""

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        if route not in EXCLUDED_ROUTES:
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(route).observe(seconds)
