"""Logs and traces of the real API: uvicorn on loopback, sign-in on, two runbooks ingested, the real llama.cpp
server with the 0.5B model, and a real OTLP/HTTP receiver (http.server decoding the protobuf body) where
OTEL_EXPORTER_OTLP_ENDPOINT points. A signed-in query, a chat answer and a session search each come back as one
trace (FastAPI server span, psycopg and reranker spans of the retrieval, httpx and OpenInference spans of the LLM call) with
the caller as enduser.id and no planted secret in any attribute; the JSON log lines of each request carry its
X-Request-ID, the caller and the trace id, with the secrets masked."""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from api.auth import CallerDep
from api.main import create_app
from api.state import AppState
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.access.keys import KeyStore
from kb.access.roles import load_roles
from kb.ingest import ingest_collections
from kb.observability import ACCESS_LOGGER, Observability, configure_logging, install_observability, shutdown_observability
from kb.platform import Platform
from kb.settings import PROJECT_ROOT, APISettings, AuthSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import SAMPLES, free_port
from tests.integration.test_monitoring import LLM_MODEL, QUESTION, RUNBOOKS, llm  # noqa: F401 (llm: the LLM server fixture)
from tests.integration.test_pipeline import collection, resources

USER = "observed-user"
AWS_KEY = "AKIAZ7Q3LMNXW2RT5KVB"  # the shape detect-secrets' AWS plugin finds; no real key
PASSWORD = "hunter2-Zq9!vX"
SECRETS = (AWS_KEY, PASSWORD)
SERVER, CLIENT = 2, 3  # opentelemetry.proto Span.SpanKind
WAIT_S = 60.0
# Variables that would change what this test sees, unset for it.
UNSET = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER",
         "OTEL_EXPORTER_OTLP_PROTOCOL", "KB_LOG_FORMAT", "KB_TRACE_CONTENT", "OPENINFERENCE_HIDE_INPUTS")  # fmt: skip


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    scope: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    resource: dict[str, Any]


@dataclass
class Receiver:
    """What the OTLP/HTTP receiver was sent: each POST /v1/traces body decoded into spans."""

    url: str
    paths: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, request: ExportTraceServiceRequest) -> None:
        decoded = [
            Span(
                span.name,
                span.kind,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                scope_spans.scope.name,
                _attributes(span.attributes),
                [_attributes(e.attributes) | {"name": e.name} for e in span.events],
                _attributes(resource_spans.resource.attributes),
            )  # fmt: skip
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.lock:
            self.paths.append(path)
            self.spans.extend(decoded)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP endpoint on loopback, as a collector's 4318 port answers."""
    received: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415, "OTLP/HTTP sends application/x-protobuf")
                return
            received.add(self.path, ExportTraceServiceRequest.FromString(body))
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    received = Receiver(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def _wait(what: str, probe: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class ObservedAPI:
    url: str
    key: str
    app: FastAPI
    logs: io.StringIO
    llm_url: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line.strip()]

    def access_line(self, request_id: str) -> dict[str, Any] | None:
        return next((x for x in self.lines() if x["logger"] == ACCESS_LOGGER and x["request_id"] == request_id), None)

    def flush(self) -> None:
        tracing = self.app.state.observability.tracing
        assert tracing is not None, "tracing is on: OTEL_EXPORTER_OTLP_ENDPOINT is set"
        assert tracing.provider.force_flush(30_000)


def _planted_log_route(app: FastAPI) -> None:
    """A route standing in for app code that logs what a caller sent: a secret in the message, in an extra field
    and in an exception's text."""

    @app.get("/test/planted-log", include_in_schema=False)
    async def planted_log(caller: CallerDep) -> dict[str, str]:
        log = logging.getLogger("kb.test.planted")
        log.warning("caller %s pasted %s", caller.identity.user, AWS_KEY, extra={"detail": {"config": f"password={PASSWORD}"}})
        try:
            raise RuntimeError(f"upstream refused password={PASSWORD}")
        except RuntimeError:
            log.exception("upstream call failed")
        return {"logged": "yes"}


@pytest.fixture(scope="module")
def observed(
    receiver: Receiver,
    postgres_url: str,
    sample_specs: list[CollectionSpec],
    embedder,  # type: ignore[no-untyped-def]
    llm: tuple[str, Platform],  # noqa: F811 (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ObservedAPI]:
    """The API under uvicorn with tracing to the receiver and JSON logs into a buffer, built in production's order:
    the app (and its instrumentation) first, then the state's connections, then logging once uvicorn set up its own."""
    folder = tmp_path_factory.mktemp("traced-runbooks")
    for runbook in RUNBOOKS:
        shutil.copy(SAMPLES / "runbooks" / runbook, folder)
    spec = collection(sample_specs, "runbooks", folder)
    report = ingest_collections([spec], resources(postgres_url, tmp_path_factory.mktemp("traced-data")),
                                dg.DagsterInstance.ephemeral())  # fmt: skip
    assert report[spec.name]["ok"], report
    migrate(postgres_url)
    store = KeyStore(postgres_url)
    key, _ = store.create(USER, "admin", note="test_observability client")
    store.close()
    llm_url, _ = llm
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in ("", "uvicorn", "uvicorn.error", "uvicorn.access")}  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # only force_flush and shutdown export: the last test relies on it
        for name in UNSET:
            env.delenv(name, raising=False)
        # The state object exists first (create_app captures it), its connections open after the instrumentation,
        # as build_state runs in the lifespan after create_app in production.
        state = AppState.__new__(AppState)
        app = create_app(state)
        install_observability(app)  # a no-op once api/main.py's create_app calls it
        _planted_log_route(app)
        index = PgVectorIndex(postgres_url)
        engine = AnswerEngine(index, embedder, [spec.name], EvidenceReranker(),
                              build_llm("openai", llm_url, LLM_MODEL, max_tokens=24, timeout=120))  # fmt: skip
        sessions = SessionStore(postgres_url)
        AppState.__init__(state, PlatformSettings(data_dir=tmp_path_factory.mktemp("traced-platform")), APISettings(),
                          LLMSettings(model=LLM_MODEL, max_answer_tokens=24), [spec], index, engine, sessions, postgres_url,
                          llm_url, auth=AuthSettings(mode="on"), roles=load_roles(PROJECT_ROOT / "roles.yaml"),
                          audit_key=b"observability-test-audit-key-32b")  # fmt: skip
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", access_log=False))
        logs = io.StringIO()
        configure_logging(stream=logs)  # where the lifespan calls it: after uvicorn's Config configured its loggers
        thread = threading.Thread(target=server.run, name="observed-api", daemon=True)
        thread.start()
        try:
            _wait("the API under uvicorn", lambda: server.started)
            yield ObservedAPI(f"http://127.0.0.1:{port}", key, app, logs, llm_url)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            shutdown_observability(app)
            for name, (handlers, propagate, level) in saved.items():
                logger = logging.getLogger(name)
                logger.handlers[:] = handlers
                logger.propagate, logger.level = propagate, level
            index.close()
            sessions.engine.dispose()


@dataclass
class Traffic:
    ids: dict[str, str]
    traces: dict[str, list[Span]]
    servers: dict[str, Span]


@pytest.fixture(scope="module")
def traffic(observed: ObservedAPI, receiver: Receiver) -> Traffic:
    """A retrieval-only query and a chat answer with a secret in the question, a session search with one in the
    query string, and the planted log line; then the spans are flushed and each request's trace collected."""
    ids = {name: uuid.uuid4().hex for name in ("query", "chat", "search", "log")}
    question = f"{QUESTION} My AWS key is {AWS_KEY}"
    with httpx.Client(base_url=observed.url, timeout=180, headers={"Authorization": f"Bearer {observed.key}"}) as client:
        responses = {
            "query": client.post("/v1/query", json={"question": question, "answer": False},
                                 headers={"X-Request-ID": ids["query"]}),
            "chat": client.post("/v1/chat/completions", headers={"X-Request-ID": ids["chat"]},
                                json={"model": "default", "messages": [{"role": "user", "content": question}]}),
            "search": client.get("/v1/sessions/search", params={"q": AWS_KEY}, headers={"X-Request-ID": ids["search"]}),
            "log": client.get("/test/planted-log", headers={"X-Request-ID": ids["log"]}),
        }  # fmt: skip
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(responses, 200), {
        name: r.text[:300] for name, r in responses.items()
    }
    assert {name: r.headers["X-Request-ID"] for name, r in responses.items()} == ids
    assert responses["query"].json()["sources"], "the question retrieves the runbook"
    assert responses["chat"].json()["choices"][0]["message"]["content"], "the LLM answered"
    # The access line is written inside the server span: once it is there, the span is about to end.
    access = {name: _wait(f"the access line of {name}", lambda i=i: observed.access_line(i)) for name, i in ids.items()}
    traces: dict[str, list[Span]] = {}
    servers: dict[str, Span] = {}
    for name, line in access.items():

        def server_span(trace_id: str = line["trace_id"]) -> Span | None:
            observed.flush()
            return next((s for s in receiver.trace(trace_id) if s.kind == SERVER), None)

        servers[name] = _wait(f"the server span of {name}", server_span)
        traces[name] = receiver.trace(line["trace_id"])
    return Traffic(ids, traces, servers)


def _descends_from(span: Span, ancestor: Span, spans: list[Span]) -> bool:
    by_id = {s.span_id: s for s in spans}
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        if span.span_id == ancestor.span_id:
            return True
    return False


def test_spans_reach_the_otlp_endpoint_with_the_service_resource(traffic: Traffic, receiver: Receiver,
                                                                 observed: ObservedAPI) -> None:  # fmt: skip
    assert set(receiver.paths) == {"/v1/traces"}
    assert {s.resource["service.name"] for s in receiver.spans} == {"kb-api"}
    assert {s.resource["service.version"] for s in receiver.spans} == {observed.app.version}
    assert traffic.servers["query"].name == "POST /v1/query"
    assert traffic.servers["chat"].name == "POST /v1/chat/completions"
    assert traffic.servers["search"].name == "GET /v1/sessions/search"
    for name, server in traffic.servers.items():
        assert server.attributes["enduser.id"] == USER, name
    assert not [s for s in receiver.spans if s.name.endswith(("/healthz", "/readyz", "/metrics"))]


def test_a_query_trace_covers_the_server_and_the_retrieval_in_postgres(traffic: Traffic) -> None:
    spans, server = traffic.traces["query"], traffic.servers["query"]
    database = [s for s in spans if s.scope == "opentelemetry.instrumentation.psycopg"]
    assert database, f"no psycopg span in the query's trace: {sorted({s.name for s in spans})}"
    assert all(s.attributes["db.system"] == "postgresql" for s in database)
    chunks = [s for s in database if "kb_chunks_" in str(s.attributes.get("db.statement", ""))]
    assert chunks, "the vector search in the collection's table is in the request's trace"
    assert all(_descends_from(s, server, spans) for s in database), "every database span is under the server span"
    # The reranker is a LlamaIndex postprocessor: OpenInference's span, its query and passages hidden by default.
    (rerank,) = [s for s in spans if s.scope == "openinference.instrumentation.llama_index" and "postprocess" in s.name]
    assert _descends_from(rerank, server, spans) and rerank.attributes.get("reranker.query") in (None, "__REDACTED__")
    assert not [k for k in rerank.attributes if k.startswith(("reranker.input_documents", "reranker.output_documents"))]


def test_a_chat_trace_covers_the_llm_call(traffic: Traffic, observed: ObservedAPI) -> None:
    spans, server = traffic.traces["chat"], traffic.servers["chat"]
    httpx_spans = [s for s in spans if s.kind == CLIENT and s.scope == "opentelemetry.instrumentation.httpx"]
    llm_http = [
        s for s in httpx_spans if str(s.attributes.get("url.full") or s.attributes.get("http.url")).startswith(observed.llm_url)
    ]
    assert llm_http, f"no httpx span to the LLM server: {sorted((s.scope, s.name) for s in spans)}"
    assert all(_descends_from(s, server, spans) for s in llm_http)
    llm_spans = [s for s in spans if s.attributes.get("openinference.span.kind") == "LLM"]
    assert llm_spans and all(_descends_from(s, server, spans) for s in llm_spans)
    # Prompt and answer are not recorded by default (KB_TRACE_CONTENT); the model is.
    for span in llm_spans:
        assert span.attributes["llm.model_name"] == LLM_MODEL
        assert not [k for k in span.attributes if k.startswith(("llm.input_messages", "llm.output_messages"))]
        assert span.attributes.get("input.value") in (None, "__REDACTED__")


def test_no_exported_attribute_carries_a_secret_or_the_question(traffic: Traffic, receiver: Receiver) -> None:
    exported = json.dumps([[s.name, s.attributes, s.events] for s in receiver.spans])
    for secret in SECRETS:
        assert secret not in exported
    assert "renew the gateway certificate" not in exported.lower(), "questions stay out of traces by default"
    # The search's query string reached the server span's URL, masked on the way out.
    search = traffic.servers["search"].attributes
    assert str(search.get("url.full") or search["http.url"]).endswith("/v1/sessions/search?q=[MASKED:aws-access-key]")


def test_log_lines_carry_the_request_id_the_caller_and_the_trace(traffic: Traffic, observed: ObservedAPI) -> None:
    lines = observed.lines()  # every line of the process's log is a JSON object
    assert any(x["logger"] == "uvicorn.error" and "Application startup complete" in x["message"] for x in lines)
    for name, request_id in traffic.ids.items():
        access = observed.access_line(request_id)
        assert access is not None and access["user"] == USER and access["status"] == 200, access
        assert access["trace_id"] == traffic.servers[name].trace_id
        assert access["duration_ms"] > 0 and access["method"] in ("GET", "POST")
    routes = {name: observed.access_line(i)["route"] for name, i in traffic.ids.items()}  # type: ignore[index]
    assert routes == {"query": "/v1/query", "chat": "/v1/chat/completions", "search": "/v1/sessions/search",
                      "log": "/test/planted-log"}  # fmt: skip
    planted = [x for x in lines if x["request_id"] == traffic.ids["log"] and x["logger"] == "kb.test.planted"]
    assert [x["level"] for x in planted] == ["WARNING", "ERROR"]
    warning, error = planted
    assert warning["user"] == USER and warning["message"] == f"caller {USER} pasted [MASKED:aws-access-key]"
    assert warning["detail"] == {"config": "password=[MASKED:credential]"}
    assert "RuntimeError: upstream refused password=[MASKED:credential]" in error["exc_info"] and error["user"] == USER
    everything = observed.logs.getvalue()
    for secret in SECRETS:
        assert secret not in everything


def test_shutdown_sends_the_spans_still_queued(traffic: Traffic, observed: ObservedAPI, receiver: Receiver) -> None:
    # Last in this file: tracing is shut down. The batch delay is ten minutes here, so only the shutdown sends it.
    request_id = uuid.uuid4().hex
    response = httpx.get(f"{observed.url}/v1/sessions", headers={"Authorization": f"Bearer {observed.key}",
                                                                 "X-Request-ID": request_id}, timeout=60)  # fmt: skip
    assert response.status_code == 200
    access = _wait("the access line", lambda: observed.access_line(request_id))
    time.sleep(1)  # the server span ends as the middleware returns, just after the access line
    assert not [s for s in receiver.trace(access["trace_id"]) if s.kind == SERVER], "not sent before the shutdown"
    shutdown_observability(observed.app)
    assert [s.name for s in receiver.trace(access["trace_id"]) if s.kind == SERVER] == ["GET /v1/sessions"]
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry, "the instrumentation is removed"
    assert isinstance(observed.app.state.observability, Observability) and observed.app.state.observability.tracing is None
