"""kb/observability.py without a server: the JSON line and its masking, configure_logging twice, the settings'
refusals, the span masking on export, bind_user, and that no endpoint means no tracing at all."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from kb.observability import (
    ACCESS_LOGGER,
    AccessLog,
    MaskingSpanExporter,
    ObservabilitySettings,
    bind_user,
    configure_logging,
    configure_tracing,
    install_observability,
)

AWS_KEY = "AKIAZ7Q3LMNXW2RT5KVB"
PASSWORD = "hunter2-Zq9!vX"
NO_ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": None, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*NO_ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SDK_DISABLED",
                 "KB_LOG_FORMAT", "KB_LOG_LEVEL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back as they were."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level,
                 logging.getLogger(n).disabled) for n in names}  # fmt: skip
    # As a fresh process has them: a uvicorn server started by an earlier test in this process leaves its levels.
    for name in names[1:]:
        logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger(name).disabled = False
    yield
    for name, (handlers, propagate, level, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.level, logger.disabled = propagate, level, disabled


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_json_line_has_the_fields_and_every_field_is_masked(clean_env: None, restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream)
    log = logging.getLogger("kb.test.json")
    log.warning("key %s in a message", AWS_KEY, extra={"detail": {"config": f"password={PASSWORD}"}, "count": 3})
    try:
        raise RuntimeError(f"connect failed with password={PASSWORD}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("uvicorn.error").info("Started %s", "server", extra={"color_message": f"Started {AWS_KEY}"})
    first, failure, uvicorn_line = _lines(stream)
    assert list(first)[:8] == ["timestamp", "level", "logger", "message", "request_id", "user", "trace_id", "span_id"]
    assert first["level"] == "WARNING" and first["logger"] == "kb.test.json" and first["request_id"] is None
    assert first["message"] == "key [MASKED:aws-access-key] in a message"
    assert first["detail"] == {"config": "password=[MASKED:credential]"} and first["count"] == 3
    assert str(first["timestamp"]).endswith("+00:00")
    assert "RuntimeError" in str(failure["exc_info"]) and "[MASKED:credential]" in str(failure["exc_info"])
    # uvicorn's loggers reach the one handler; their unformatted colour copy of the message is not written.
    assert uvicorn_line["message"] == "Started server" and "color_message" not in uvicorn_line
    assert AWS_KEY not in stream.getvalue() and PASSWORD not in stream.getvalue()


def test_configure_logging_twice_keeps_one_handler_and_its_stream(clean_env: None, restored_logging: None) -> None:
    stream = io.StringIO()
    first = configure_logging(ObservabilitySettings(), stream)
    second = configure_logging(ObservabilitySettings(log_format="text", log_level="debug"))
    root = logging.getLogger()
    assert first not in root.handlers and root.handlers.count(second) == 1 and root.level == logging.DEBUG
    assert [type(h) for h in root.handlers].count(type(second)) == 1
    logging.getLogger("kb.test.text").info("token=%s", "ghp_" + "a1B2" * 9)
    line = stream.getvalue().strip()
    assert "INFO kb.test.text [request_id=None user=None] token=[MASKED:" in line and "a1B2" not in line
    assert not logging.getLogger("uvicorn.access").handlers and not logging.getLogger("uvicorn.access").propagate


def test_settings_refuse_what_cannot_work(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    settings = ObservabilitySettings()
    assert settings.traces_endpoint == "http://collector:4318/v1/traces" and settings.tracing
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example:4318/custom")
    assert ObservabilitySettings().traces_endpoint == "https://traces.example:4318/custom"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValidationError, match="only the http/protobuf exporter is installed"):
        ObservabilitySettings()
    with pytest.raises(ValidationError, match="KB_LOG_LEVEL must be one of"):
        ObservabilitySettings(log_level="LOUD", otlp_protocol="http/protobuf")
    with pytest.raises(ValidationError, match="http\\(s\\) URL"):
        ObservabilitySettings(otlp_endpoint="collector:4318", otlp_traces_endpoint=None, otlp_protocol="http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not ObservabilitySettings().tracing


def test_exported_spans_carry_no_secret_in_attributes_or_events() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(MaskingSpanExporter(memory)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /v1/sessions/search") as span:
        span.set_attribute("http.target", f"/v1/sessions/search?q={AWS_KEY}")
        span.set_attribute("tags", ["plain", f"password={PASSWORD}"])
        span.set_attribute("http.status_code", 200)
        span.record_exception(RuntimeError(f"refused key {AWS_KEY}"))
        span.set_status(trace.StatusCode.ERROR, f"refused key {AWS_KEY}")
    (exported,) = memory.get_finished_spans()
    assert exported.attributes is not None
    assert exported.attributes["http.target"] == "/v1/sessions/search?q=[MASKED:aws-access-key]"
    assert exported.attributes["tags"] == ("plain", "password=[MASKED:credential]")
    assert exported.attributes["http.status_code"] == 200
    event = exported.events[0]
    assert event.name == "exception" and event.attributes is not None
    assert AWS_KEY not in str(dict(event.attributes)) and "[MASKED:aws-access-key]" in str(event.attributes["exception.message"])
    assert exported.status.description == "refused key [MASKED:aws-access-key]"
    assert exported.context == span.get_span_context() and exported.name == "GET /v1/sessions/search"


def test_bind_user_marks_the_span_and_the_log_records(clean_env: None, restored_logging: None) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream)
    with provider.get_tracer("test").start_as_current_span("request") as span:
        bind_user("alice")
        logging.getLogger("kb.test.user").info("inside")
        context = span.get_span_context()
    (line,) = _lines(stream)
    assert line["user"] == "alice"
    assert line["trace_id"] == trace.format_trace_id(context.trace_id) and line["span_id"] == trace.format_span_id(
        context.span_id
    )
    assert memory.get_finished_spans()[0].attributes == {"enduser.id": "alice"}


def test_no_endpoint_installs_no_tracing_and_records_no_span(clean_env: None, restored_logging: None) -> None:
    app = FastAPI()
    recording: list[bool] = []

    @app.get("/v1/probe")
    def probe() -> dict[str, str]:
        recording.append(trace.get_current_span().is_recording())
        logging.getLogger("kb.test.probe").info("probe")
        return {"ok": "yes"}

    observability = install_observability(app)
    assert observability.tracing is None and configure_tracing(app, ObservabilitySettings()) is None
    assert install_observability(app) is observability, "a second call installs nothing more"
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
    assert not PsycopgInstrumentor().is_instrumented_by_opentelemetry
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert [m.cls for m in app.user_middleware].count(AccessLog) == 1
    stream = io.StringIO()
    configure_logging(ObservabilitySettings(), stream)
    with TestClient(app) as client:
        given = client.get("/v1/probe", headers={"X-Request-ID": "0f5a3c9e2b7d4e1f8a6b5c4d3e2f1a0b"})
        generated = client.get("/v1/probe", headers={"X-Request-ID": "not a uuid"})
    assert recording == [False, False], "no span exists while the route runs"
    assert given.headers["X-Request-ID"] == "0f5a3c9e2b7d4e1f8a6b5c4d3e2f1a0b"
    assert len(generated.headers["X-Request-ID"]) == 32 and generated.headers["X-Request-ID"] != "not a uuid"
    access = [line for line in _lines(stream) if line["logger"] == ACCESS_LOGGER]
    assert [(a["request_id"], a["route"], a["status"], a["trace_id"]) for a in access] == [
        ("0f5a3c9e2b7d4e1f8a6b5c4d3e2f1a0b", "/v1/probe", 200, None),
        (generated.headers["X-Request-ID"], "/v1/probe", 200, None),
    ]
