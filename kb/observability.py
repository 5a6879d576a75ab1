"""Logs and traces of the API process: one JSON line per record, masked, with the request id, the signed-in user
and the trace it belongs to; OpenTelemetry traces over OTLP/HTTP when an endpoint is configured.

Logs: every record of the process goes through one handler on the root logger (uvicorn's loggers propagate to it).
Its filters run before its formatter, in this order: the request id (asgi-correlation-id), the user and the trace
(this module), then assets/mask.py's MaskingFilter on the message and traceback. The JSON formatter then masks
every other field it writes (extras such as `extra={"detail": …}` and the traceback it formats itself from
`exc_info`), so nothing reaches the output unmasked. uvicorn's own access log is turned off: `AccessLog` writes
one line per request instead, inside the request, so it carries the route template, the duration and the user.

Traces (only with OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set; otherwise nothing is
installed and nothing runs): the instrumentation libraries make the spans (FastAPI server spans, httpx client
spans for the LLM server and connectors, psycopg spans for PostgreSQL, OpenInference's LlamaIndex spans for LLM
calls). OpenInference records prompts, answers and passages unless told not to: they are hidden by default
(KB_TRACE_CONTENT=true records them), and every exported attribute goes through the masker on the way out.
The tracer provider stays the app's own (not the process-global one), so nothing else in the process exports.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO

from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from assets.mask import MaskingFilter, mask_secrets

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import Attributes
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Probes and scrapes: not traced, and their access lines are DEBUG (every few seconds each, they would drown the rest).
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# The loggers uvicorn configures with handlers of its own; theirs are replaced so every line has one format.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
ACCESS_LOGGER = "kb.access"
REQUEST_ID_HEADER = "X-Request-ID"
# Fields this module writes itself (never user text) or that MaskingFilter has already masked.
_CLEAN_FIELDS = frozenset({"timestamp", "level", "logger", "message", "request_id", "user", "trace_id", "span_id"})
# uvicorn's `color_message` repeats the message unformatted, with ANSI colours: never written.
_NOT_WRITTEN = [*RESERVED_ATTRS, "color_message", "taskName"]
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(user)s %(trace_id)s %(span_id)s"
_JSON_RENAMES = {"asctime": "timestamp", "levelname": "level", "name": "logger", "correlation_id": "request_id"}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(correlation_id)s user=%(user)s] %(message)s"

_user: ContextVar[str | None] = ContextVar("kb_user", default=None)


class ObservabilitySettings(BaseSettings):
    """Log format and level, and where traces go (the standard OTEL_* variables; the exporter reads the rest of
    them itself: OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE, OTEL_BSP_*, OTEL_TRACES_SAMPLER)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias="KB_LOG_FORMAT", description="'json' (one object a line) or 'text' (for a terminal)."
    )
    log_level: str = Field(default="INFO", validation_alias="KB_LOG_LEVEL", description="Level of the root logger.")
    otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT", description="Collector base URL; traces go to …/v1/traces."
    )
    otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", description="Full traces URL; wins over the base."
    )
    otlp_protocol: str = Field(
        default="http/protobuf",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        description="Only http/protobuf is installed.",
    )
    service_name: str = Field(default="kb-api", validation_alias="OTEL_SERVICE_NAME")
    sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED", description="True: no traces at all.")
    trace_content: bool = Field(
        default=False,
        validation_alias="KB_TRACE_CONTENT",
        description="Record prompts, answers and passages in LlamaIndex spans (masked; OPENINFERENCE_HIDE_* then apply).",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"KB_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return value.upper()

    @field_validator("otlp_endpoint", "otlp_traces_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # an empty variable means unset, as the OTel SDK reads it
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"an OTLP endpoint is an http(s) URL such as http://collector:4318, not {value!r}")
        return value

    @model_validator(mode="after")
    def _http_protobuf_only(self) -> Self:
        if self.traces_endpoint and self.otlp_protocol != "http/protobuf":
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={self.otlp_protocol}: only the http/protobuf exporter is installed; "
                "point the endpoint at the collector's OTLP/HTTP port (4318)"
            )
        return self

    @property
    def traces_endpoint(self) -> str | None:
        """Where spans are POSTed, as the OTLP exporter spec derives it; None: tracing off."""
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return self.otlp_endpoint.rstrip("/") + "/v1/traces"
        return None

    @property
    def tracing(self) -> bool:
        return self.traces_endpoint is not None and not self.sdk_disabled


# ---------------------------------------------------------------------------------------------------------
# Who and which trace: context for every log record.


def bind_user(user: str) -> None:
    """The signed-in user of this request: on its log records and, when tracing, as enduser.id on its span."""
    _user.set(user)
    trace.get_current_span().set_attribute("enduser.id", user)  # a no-op span when tracing is off


def current_user() -> str | None:
    return _user.get()


class RequestContextFilter(logging.Filter):
    """Adds `user`, `trace_id` and `span_id` (hex, as trace back-ends show them) to every record; None outside."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.user = _user.get()
        context = trace.get_current_span().get_span_context()
        record.trace_id = trace.format_trace_id(context.trace_id) if context.is_valid else None
        record.span_id = trace.format_span_id(context.span_id) if context.is_valid else None
        return True


def _masked(value: Any) -> Any:
    """Strings masked, also inside lists and dicts; numbers and the like as they are."""
    if isinstance(value, str):
        return mask_secrets(value).text
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(item) for item in value)  # span attributes keep their tuples
    return value


class MaskedJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with an ISO UTC timestamp first and every field it adds masked.

    Needed because it formats the traceback again from `exc_info` (not from the `exc_text` MaskingFilter masked)
    and writes `extra` fields the filter never sees."""

    def __init__(self) -> None:
        super().__init__(_JSON_FIELDS, rename_fields=_JSON_RENAMES, reserved_attrs=_NOT_WRITTEN, json_ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: value if key in _CLEAN_FIELDS else _masked(value) for key, value in log_data.items()}


class _KbHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so a second call replaces it instead of adding one."""


def configure_logging(settings: ObservabilitySettings | None = None, stream: TextIO | None = None) -> logging.Handler:
    """One handler on the root logger (JSON or text), masked, with request id, user and trace; uvicorn's loggers
    propagate to it. Call it after uvicorn has configured logging (the app's lifespan); calling it again replaces
    the handler and keeps its stream unless another is given. Returns the handler."""
    settings = settings or ObservabilitySettings()
    root = logging.getLogger()
    previous = [h for h in root.handlers if isinstance(h, _KbHandler)]
    if stream is None:
        stream = previous[0].stream if previous else sys.stderr
    for handler in previous:
        root.removeHandler(handler)
    handler = _KbHandler(stream)
    # Filters run in this order, all before the formatter: context first, then the masker on the message.
    handler.addFilter(CorrelationIdFilter())
    handler.addFilter(RequestContextFilter())
    handler.addFilter(MaskingFilter())
    handler.setFormatter(MaskedJsonFormatter() if settings.log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # AccessLog writes the access lines; with no handler and no propagation uvicorn skips its own (--no-access-log).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    return handler


class ResponseObserver:
    """Pure ASGI middleware base: runs the app, then `observe(scope, status, seconds)` once the response is done
    (the router has written the matched route into the scope by then). An exception before the response started
    counts as the 500 that Starlette's outermost error middleware then sends."""

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
            self.observe(scope, status, time.perf_counter() - started)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        raise NotImplementedError


class AccessLog(ResponseObserver):
    """One `kb.access` line per HTTP request, after its response: method, path, route template, status, duration,
    client; request id, user and trace come from the record's context."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.log = logging.getLogger(ACCESS_LOGGER)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        self._line(scope, status, seconds * 1000)

    def _line(self, scope: Scope, status: int, ms: float) -> None:
        path = str(scope.get("path", ""))
        level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        route = getattr(scope.get("route"), "path", None)  # the router writes the matched route into the scope
        client = scope.get("client")
        details = {"method": scope.get("method"), "path": path, "route": route, "status": status,
                   "duration_ms": round(ms, 1), "client": client[0] if client else None}  # fmt: skip
        self.log.log(level, "%s %s %d %.1fms", details["method"], path, status, ms, extra=details)


# ---------------------------------------------------------------------------------------------------------
# Traces.


class MaskingSpanExporter(SpanExporter):
    """Wraps the OTLP exporter: every string attribute of every span and span event goes through the masker on its
    way out, whichever instrumentation wrote it (a secret in a query string, an exception message, a prompt)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([masked_span(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def _masked_attributes(attributes: Attributes) -> dict[str, Any]:
    return {key: _masked(value) if isinstance(value, str | tuple | list) else value for key, value in (attributes or {}).items()}


def masked_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span with its attributes, its events' attributes and its status text masked."""
    events = [Event(e.name, _masked_attributes(e.attributes), e.timestamp) for e in span.events]
    status = Status(span.status.status_code, _masked(span.status.description)) if span.status.description else span.status
    return ReadableSpan(name=span.name, context=span.context, parent=span.parent, resource=span.resource,
                        attributes=_masked_attributes(span.attributes), events=events, links=span.links, kind=span.kind,
                        status=status, start_time=span.start_time, end_time=span.end_time,
                        instrumentation_scope=span.instrumentation_scope)  # fmt: skip


@dataclass
class Tracing:
    """The app's tracer provider and the process-wide instrumentations it installed (undone at shutdown)."""

    provider: TracerProvider
    instrumentors: list[BaseInstrumentor] = field(default_factory=list)

    def shutdown(self) -> None:
        """Flushes what is queued to the collector, then removes the instrumentations."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.instrumentors.clear()
        self.provider.shutdown()


def configure_tracing(app: FastAPI, settings: ObservabilitySettings) -> Tracing | None:
    """With an endpoint: a tracer provider exporting over OTLP/HTTP (batched, masked), the FastAPI app instrumented
    and httpx, psycopg and LlamaIndex instrumented process-wide. Without one: None, nothing installed."""
    if not settings.tracing:
        return None
    from openinference.instrumentation import TraceConfig
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: app.version})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, on)
    exporter = MaskingSpanExporter(OTLPSpanExporter(endpoint=settings.traces_endpoint))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    excluded = ",".join(f"//[^/]+{path}$" for path in sorted(QUIET_PATHS))  # matched against scheme://host/path
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=excluded, exclude_spans=["receive", "send"])
    # Prompts, answers, passages and tool arguments stay out of traces unless asked for: traces are kept longer and
    # read by more people than the conversations, whose retention policy they would escape.
    content = (
        TraceConfig() if settings.trace_content else TraceConfig(hide_inputs=True, hide_outputs=True, hide_embeddings_text=True)
    )
    tracing = Tracing(provider)
    for instrumentor, options in ((HTTPXClientInstrumentor(), {}), (PsycopgInstrumentor(), {}),
                                  (LlamaIndexInstrumentor(), {"config": content})):  # fmt: skip
        if not instrumentor.is_instrumented_by_opentelemetry:  # process-wide: another app here may have done it
            instrumentor.instrument(tracer_provider=provider, **options)
            tracing.instrumentors.append(instrumentor)
    return tracing


# ---------------------------------------------------------------------------------------------------------
# Wiring.


@dataclass
class Observability:
    settings: ObservabilitySettings
    tracing: Tracing | None


def install_observability(app: FastAPI, settings: ObservabilitySettings | None = None) -> Observability:
    """Request ids, access lines and (with an endpoint) tracing on `app`; once per app. Call it in create_app after
    the last add_middleware, so the request id is set before every other middleware runs."""
    installed = getattr(app.state, "observability", None)
    if isinstance(installed, Observability):
        return installed
    settings = settings or ObservabilitySettings()
    app.add_middleware(AccessLog)
    # Outermost of the app's middleware: the id is known to everything inside, 4xx of the input guard included.
    # The request's own header stays as sent: the input guard inside must still see (and refuse) a NUL byte in it.
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER, update_request_header=False)
    observability = Observability(settings, configure_tracing(app, settings))
    app.state.observability = observability
    return observability


def shutdown_observability(app: FastAPI) -> None:
    """At the end of the lifespan: the spans still queued are sent, the instrumentations removed. Safe to repeat."""
    installed = getattr(app.state, "observability", None)
    if isinstance(installed, Observability) and installed.tracing is not None:
        installed.tracing.shutdown()
        installed.tracing = None
