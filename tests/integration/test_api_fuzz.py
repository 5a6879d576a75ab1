"""The API under schemathesis: every operation of the OpenAPI schema, positive and negative requests,
never a server error; plus the regressions it and an outside fuzzer found (NUL bytes, integer bounds,
body size), as plain requests with their status and message.

The app runs as in test_api_llm_down.py: the real embedded PostgreSQL, a small ingested index, and an LLM
URL nothing listens on, so chat answers 503 and /v1/query falls back to sources; 500 is never an answer."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, HookContext
from schemathesis.config import SchemathesisConfig
from starlette.types import Receive, Scope, Send

from api.main import create_app
from api.security import sign
from api.state import AppState
from api.validation import BIGINT_MAX
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.access.keys import KeyStore
from kb.access.roles import RolesConfig, RoleSpec
from kb.ingest import ingest_collections
from kb.settings import APISettings, AuthSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.llm import build_llm
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import SAMPLES, free_port
from tests.integration.test_pipeline import resources

# Per operation, for the fuzzing phase; the coverage phase adds its own boundary cases on top. Sized so the
# whole file runs in about two to three minutes on a loaded 2-core machine.
MAX_EXAMPLES = 100
SEED = 20261201
# The LLM is down in this test: these operations say so with a 503. Every other 5xx is a bug.
LLM_DOWN_503 = {"POST /v1/chat/completions", "GET /readyz"}
STORED_QUESTION = "How do I renew the gateway certificate?"
LLM_MODEL = "qwen2.5-coder-0.5b-instruct"
FUZZ_COLLECTION = "fuzz_runbooks"


# A role that may do everything, with a limit the fuzzer never meets: every generated request reaches its
# route past authentication (the rate limit and sign-in are tested in test_access.py).
FUZZ_ROLES = RolesConfig(roles={"fuzzer": RoleSpec(collections=("*",), connectors=("*",), admin=True, all_documents=True,
                                                   read_others_sessions=True, requests_per_minute=100_000)})  # fmt: skip


@pytest.fixture(scope="module")
def auth_headers(postgres_url: str) -> dict[str, str]:
    """Headers every request of this file carries, the fuzzer's included: a valid API key of the fuzzing role."""
    migrate(postgres_url)
    store = KeyStore(postgres_url)
    key, _ = store.create("fuzz-user", "fuzzer", note="schemathesis")
    store.close()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def fuzz_state(
    postgres_url: str, sample_specs: list[CollectionSpec], embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppState]:  # type: ignore[no-untyped-def]
    """The Markdown runbooks ingested into a collection of their own, one stored conversation, an LLM that is down."""
    folder = tmp_path_factory.mktemp("fuzz-runbooks")
    for runbook in (SAMPLES / "runbooks").glob("*.md"):  # not the PDF and DOCX: their parsing is the slow part
        shutil.copy(runbook, folder)
    runbooks = next(s for s in sample_specs if s.name == "runbooks")
    spec = runbooks.model_copy(
        update={"name": FUZZ_COLLECTION, "source": runbooks.source.model_copy(update={"path": str(folder)})}
    )
    report = ingest_collections(
        [spec], resources(postgres_url, tmp_path_factory.mktemp("fuzz-data")), dg.DagsterInstance.ephemeral()
    )
    assert report[spec.name]["ok"], report
    migrate(postgres_url)
    dead_llm = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    llm_settings = LLMSettings(model=LLM_MODEL)
    index = PgVectorIndex(postgres_url)
    engine = AnswerEngine(
        index, embedder, [spec.name], EvidenceReranker(), build_llm("openai", dead_llm, llm_settings.model, timeout=5)
    )
    sessions = SessionStore(postgres_url)
    sessions.add(sessions.create("fuzz-user", "certificates", llm_settings.model), "user", STORED_QUESTION)
    platform = PlatformSettings(data_dir=tmp_path_factory.mktemp("fuzz-platform"))
    # Sign-in on: the fuzzer goes through authentication like any client, with the key of auth_headers.
    yield AppState(platform, APISettings(), llm_settings, [spec], index, engine, sessions, postgres_url, dead_llm,
                   auth=AuthSettings(mode="on"), roles=FUZZ_ROLES, audit_key=b"fuzz-test-audit-key-of-32-bytes!")  # fmt: skip
    index.close()
    sessions.engine.dispose()


class _AppUnderTest:
    """What the fuzzer calls. The schema is read when this module is imported, before any fixture; the app
    is built on the test database once `fuzz_app` hands over the state. Schemathesis ends the lifespan after
    each operation and an app's MCP session manager runs only once, so each lifespan gets a fresh app."""

    def __init__(self) -> None:
        self.state: AppState | None = None
        self.app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert self.state is not None, "request the fuzz_app fixture"
            self.app = create_app(self.state)
        assert self.app is not None
        await self.app(scope, receive, send)


APP_UNDER_TEST = _AppUnderTest()
# Hypothesis's caches (constants, Unicode tables) go to a folder removed at exit, not to .hypothesis/ in the
# repo; set before the schema below is parametrized, which is when Hypothesis first writes them.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="kb-fuzz-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)
OPENAPI = create_app().openapi()
# A fixed seed and no example database: the same requests on every run and machine, and no files written.
# Dictionaries steer part of the generated values to what PostgreSQL refuses (NUL, integers past bigint), which
# plain generation rarely draws, and to the names that get past the first checks (model, role, collection).
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {
            "deterministic": True,
            "database": "none",
            "dictionaries": {
                "string": {"dictionary": "postgres-traps", "probability": 0.1},
                "integer": {"dictionary": "past-bigint", "probability": 0.2},
            },
        },
        "dictionaries": {
            "postgres-traps": {"values": ["renew\x00cert", "\x00", "%00"]},
            "past-bigint": {"values": [2**63, -(2**63) - 1, 10**30]},
            "models": {"values": ["default", LLM_MODEL]},
            "collections": {"values": [FUZZ_COLLECTION]},
            "roles": {"values": ["user"]},
        },
        "parameters": {
            "body.model": {"dictionary": "models", "probability": 0.5},
            "body.messages[*].role": {"dictionary": "roles", "probability": 0.5},
            "body.collections[*]": {"dictionary": "collections", "probability": 0.5},
            "path.collection": {"dictionary": "collections", "probability": 0.5},
        },
    }
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)
schema.app = APP_UNDER_TEST


@schema.hook("map_body")
def ask_a_question(context: HookContext, body: Any) -> Any:
    """Generated chat messages rarely carry text: a last user message without any gets a question, so the
    request goes on to retrieval and the LLM (down here) instead of stopping at 'no user message with text'."""
    if context.operation is None or context.operation.label != "POST /v1/chat/completions":
        return body
    messages = body.get("messages") if isinstance(body, dict) else None
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "user" and not last.get("content"):
        last["content"] = STORED_QUESTION
    return body


@pytest.fixture(scope="module")
def fuzz_app(fuzz_state: AppState) -> Iterator[_AppUnderTest]:
    APP_UNDER_TEST.state = fuzz_state
    yield APP_UNDER_TEST
    APP_UNDER_TEST.state = APP_UNDER_TEST.app = None


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[defaultdict[str, Counter[int]]]:
    """Status codes per operation; printed when the module ends."""
    counts: defaultdict[str, Counter[int]] = defaultdict(Counter)
    yield counts
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():  # shown with or without -s
        print(f"\nschemathesis: {len(counts)} operations, {sum(map(Counter.total, counts.values()))} requests")
        for label, statuses in sorted(counts.items()):
            print(f"  {statuses.total():5d}  {label}  ({', '.join(f'{k}: {n}' for k, n in sorted(statuses.items()))})")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error(
    case: Case, fuzz_app: _AppUnderTest, auth_headers: dict[str, str], tally: defaultdict[str, Counter[int]]
) -> None:
    response = case.call(headers=auth_headers)
    tally[case.operation.label][response.status_code] += 1
    allowed = response.status_code == 503 and case.operation.label in LLM_DOWN_503
    assert response.status_code < 500 or allowed, (
        f"{response.status_code} from {case.operation.label}: {response.text[:500]}\n{case.as_curl_command()}"
    )
    if 400 <= response.status_code < 500:
        assert response.json().get("detail"), f"{response.status_code} without a message: {response.text[:500]}"


# Regressions: each was a 500 (or could reach PostgreSQL as one) before api/validation.py.


@pytest.fixture(scope="module")
def client(fuzz_state: AppState, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    # An app of its own: an app's MCP session manager runs once, and the fuzzer's app already started it.
    with TestClient(create_app(fuzz_state), headers=auth_headers) as test_client:
        yield test_client


def _refused(response, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["detail"] and body["error"]["message"] == body["detail"] and body["error"]["code"] == status


def test_nul_byte_in_the_session_search_is_refused(client: TestClient) -> None:
    _refused(client.get("/v1/sessions/search", params={"q": "renew\x00gateway"}), 400, "'q': its value contains a NUL byte")
    _refused(client.get("/v1/sessions/search?q=renew%00gateway"), 400, "contains a NUL byte")
    found = client.get("/v1/sessions/search", params={"q": "renew gateway"})
    assert found.status_code == 200 and found.json()["data"], "the same search without the NUL byte finds the stored message"


def test_session_offset_past_its_bound_is_refused(client: TestClient) -> None:
    _refused(client.get("/v1/sessions", params={"offset": 10**19}), 422, "query.offset: must be an integer from 0 to 1000000")
    _refused(client.get("/v1/sessions", params={"offset": "9" * 5000}), 422, "query.offset")
    _refused(client.get("/v1/sessions", params={"offset": 1_000_001}), 422, "query.offset")
    _refused(client.get("/v1/sessions", params={"offset": " 1_000_001 "}), 422, "query.offset")  # as pydantic reads it
    _refused(client.get("/v1/sessions", params={"limit": "0\x1f"}), 422, "query.limit")  # found by the fuzzer: not an int
    assert client.get("/v1/sessions", params={"offset": 1_000_000}).json() == {"data": []}
    assert client.get("/v1/sessions", params={"user": "fuzz-user", "offset": 0}).json()["data"]


def test_every_integer_parameter_declares_a_bound_within_bigint() -> None:
    operations = OPENAPI["paths"]
    integers = [
        (path, p["name"], branch)
        for path, item in operations.items()
        for operation in item.values()
        for p in operation.get("parameters", [])
        for branch in [p["schema"], *p["schema"].get("anyOf", [])]
        if branch.get("type") == "integer"
    ]
    assert integers, "the sessions list has integer parameters"
    assert not [(path, name) for path, name, branch in integers if branch.get("maximum", BIGINT_MAX + 1) > BIGINT_MAX]


def test_nul_byte_in_the_path_is_refused(client: TestClient) -> None:
    _refused(client.get("/v1/sessions/abc%00def"), 400, "the path contains a NUL byte")
    _refused(client.delete("/v1/sessions/abc%00def/export"), 400, "the path contains a NUL byte")


def test_nul_byte_in_a_header_value_is_refused(client: TestClient) -> None:
    _refused(client.get("/v1/sessions", headers={"X-Request-Id": "a\x00b"}), 400, "header 'x-request-id' contains a NUL byte")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"question": "renew\x00cert"}, "the JSON body at question contains a NUL byte"),
        ({"question": "renew", "filters": {"sys\x00tem": "gateway"}}, "a JSON key at filters contains a NUL byte"),
        ({"question": "renew", "filters": {"system": ["gateway", "a\x00"]}}, "the JSON body at filters.system.1 contains a NUL"),
        ({"question": "renew \ud800 cert"}, "the JSON body at question contains an unpaired UTF-16 surrogate"),
    ],
)
def test_nul_or_surrogate_anywhere_in_a_json_body_is_refused(client: TestClient, body: dict[str, object], message: str) -> None:
    # json.dumps escapes both as \u0000 and \ud800, as a client would send them.
    _refused(client.post("/v1/query", content=json.dumps(body), headers={"content-type": "application/json"}), 400, message)


def test_deeply_nested_json_is_refused(client: TestClient) -> None:
    for depth in (100, 100_000):  # past the guard's limit; past Python's recursion limit
        nested = "[" * depth + "]" * depth
        body = '{"question": "renew", "filters": {"a": ' + nested + "}}"
        _refused(client.post("/v1/query", content=body, headers={"content-type": "application/json"}), 400, "nested deeper than")


def test_signed_webhook_with_a_nul_byte_in_a_path_is_refused(client: TestClient, fuzz_state: AppState) -> None:
    body = json.dumps({"collection": fuzz_state.specs[0].name, "paths": ["cert\x00.md"]}).encode()
    signature = {"X-KB-Signature": sign(body, fuzz_state.api.webhook_secret)}
    _refused(client.post("/webhooks/incident", content=body, headers=signature), 400, "at paths.0 contains a NUL byte")


def test_nul_byte_in_an_mcp_request_is_refused(client: TestClient) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "a\x00"}}}
    response = client.post("/mcp", json=call, headers={"accept": "application/json, text/event-stream"})
    _refused(response, 400, "the JSON body at params.arguments.query contains a NUL byte")


def test_malformed_json_and_wrong_content_type_get_4xx_with_a_message(client: TestClient) -> None:
    malformed = client.post("/v1/query", content=b'{"question": "renew', headers={"content-type": "application/json"})
    _refused(malformed, 422, "JSON decode error")
    huge_number = client.post("/v1/query", content=b'{"question": "renew", "x": ' + b"9" * 5000 + b"}",
                              headers={"content-type": "application/json"})  # fmt: skip
    # Python refuses int() of over 4300 digits; FastAPI's own 400 (Starlette's HTTPException: no `error` object).
    assert huge_number.status_code == 400 and "error parsing the body" in huge_number.json()["detail"]
    as_text = client.post("/v1/query", content=json.dumps({"question": "renew"}), headers={"content-type": "text/plain"})
    _refused(as_text, 422, "body: Input should be a valid dictionary")


def test_body_over_the_limit_is_refused_with_or_without_content_length(client: TestClient, fuzz_state: AppState) -> None:
    limit = fuzz_state.api.max_request_bytes
    question = json.dumps({"question": "x" * (limit + 10)}).encode()

    def chunked() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for start in range(0, len(question), 65536):
            yield question[start : start + 65536]

    headers = {"content-type": "application/json"}
    _refused(client.post("/v1/query", content=chunked(), headers=headers), 413, f"request body over {limit} bytes")
    _refused(client.post("/v1/query", content=question, headers=headers), 413, "request body over")
    huge_length = {**headers, "content-length": str(10**30)}
    _refused(client.post("/v1/query", content=b"{}", headers=huge_length), 413, "request body over")
    _refused(client.post("/v1/query", content=b"{}", headers={**headers, "content-length": "12abc"}), 400, "Content-Length")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": "renew", "collections": [f"c{i}" for i in range(21)]}, "collections"),
        ({"question": "renew", "filters": {f"k{i}": "v" for i in range(21)}}, "filters"),
        ({"question": "renew", "filters": {"system": "v" * 501}}, "filters.system"),
        ({"question": "renew", "user": "u" * 201}, "user"),
    ],
)
def test_query_fields_past_their_bounds_are_refused(client: TestClient, body: dict[str, object], field: str) -> None:
    _refused(client.post("/v1/query", json=body), 422, f"body.{field}")


def test_nul_byte_in_a_chat_message_is_refused_and_nothing_is_stored(client: TestClient) -> None:
    chat = {"model": "default", "user": "nul-test", "messages": [{"role": "user", "content": "renew\x00cert"}]}
    _refused(client.post("/v1/chat/completions", json=chat), 400, "the JSON body at messages.0.content contains a NUL")
    assert client.get("/v1/sessions", params={"user": "nul-test"}).json() == {"data": []}


def test_chat_user_past_the_stored_column_is_refused(client: TestClient) -> None:
    chat = {"model": "default", "user": "u" * 201, "messages": [{"role": "user", "content": STORED_QUESTION}]}
    _refused(client.post("/v1/chat/completions", json=chat), 422, "body.user")


def test_query_within_the_bounds_still_answers_with_sources(client: TestClient) -> None:
    body = {"question": STORED_QUESTION, "answer": False, "collections": [FUZZ_COLLECTION], "filters": {"system": []}}
    assert client.post("/v1/query", json=body).json()["sources"] == [], "a filter no chunk matches leaves no sources"
    response = client.post("/v1/query", json={**body, "filters": None})
    assert response.status_code == 200 and response.json()["sources"][0]["path"] == "certificate-renewal.md"
