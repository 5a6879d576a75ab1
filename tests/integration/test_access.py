"""Access control through the API, on the real embedded PostgreSQL with a real index: API keys, OIDC
tokens (a JWKS on loopback), LDAP sign-in (a real slapd), roles, document access lists, session privacy,
per-user rate limits and failed sign-ins, all recorded in the audit log."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.main import create_app
from api.state import AppState
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.access.keys import KeyStore
from kb.access.roles import RolesConfig, RoleSpec, load_roles
from kb.ingest import ingest_collections
from kb.settings import PROJECT_ROOT, APISettings, AuthSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.memory import SessionStore, migrate
from query_engine.rerank import EvidenceReranker
from tests.conftest import free_port
from tests.integration.test_identity_providers import AUDIENCE, ISSUER, JWKSServer, SigningKey, _serve_jwks, claims
from tests.integration.test_pipeline import collection, resources
from tests.slapd import GROUPS_BASE, USER_DN_TEMPLATE, USERS, Slapd, slapd  # noqa: F401

# Words found only in the restricted documents, so a query matches nothing else.
SECRET_FRONT_MATTER = "Quokkaflux settlement cipher rotation happens every Thursday at 04:00 in vault zone marigold."
SECRET_FOLDER = "Zebrastripe ledger reconciliation escrow uses the tangerine reserve account for overnight holds."


@dataclass
class Platform:
    client: TestClient
    state: AppState
    keys: dict[str, str]
    docs: str
    runbooks: str
    jwks: JWKSServer
    signer: SigningKey

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def _knowledge_base(root: Path) -> tuple[Path, Path]:
    docs = root / "docs"
    shutil.copytree(PROJECT_ROOT / "examples/knowledge_base/technical_docs", docs)
    (docs / "cipher-rotation.md").write_text(
        f"---\nallowed_groups: [treasury, admin]\n---\n# Cipher rotation\n\n{SECRET_FRONT_MATTER}\n"
    )
    (docs / "escrow").mkdir()
    (docs / "escrow" / ".kb-access.yaml").write_text("allowed_groups: [devops]\n")
    (docs / "escrow" / "holds.md").write_text(f"# Escrow holds\n\n{SECRET_FOLDER}\n")
    runbooks = root / "runbooks"
    shutil.copytree(PROJECT_ROOT / "examples/knowledge_base/runbooks", runbooks)
    return docs, runbooks


@pytest.fixture(scope="module")
def platform(postgres_url: str, sample_specs: list[CollectionSpec], tmp_path_factory: pytest.TempPathFactory,
             embedder: Any, slapd: Slapd) -> Iterator[Platform]:  # noqa: F811  # fmt: skip
    root = tmp_path_factory.mktemp("access")
    docs_dir, runbooks_dir = _knowledge_base(root)
    docs = collection(sample_specs, "technical_docs", docs_dir)
    runbooks = collection(sample_specs, "runbooks", runbooks_dir)
    report = ingest_collections([docs, runbooks], resources(postgres_url, root / "data"), dg.DagsterInstance.ephemeral())
    assert all(r["ok"] for r in report.values()), report
    migrate(postgres_url)
    with SessionStore(postgres_url).engine.begin() as conn:  # a clean slate for counters and keys of this module
        conn.execute(text("TRUNCATE kb_rate_limits, kb_api_keys"))
    shipped = load_roles(PROJECT_ROOT / "roles.yaml")
    roles = RolesConfig(
        default_requests_per_minute=100, max_open_sessions=3,
        roles={**shipped.roles, "viewer": RoleSpec(collections=(docs.name,), connectors=("docs",)),
               "developer": RoleSpec(collections=(docs.name, runbooks.name), connectors=("docs",)),
               "limited": RoleSpec(collections=(docs.name,), requests_per_minute=12)},
        groups=shipped.groups,
    )  # fmt: skip
    signer = SigningKey("rsa-access", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    jwks = JWKSServer(keys=[signer])
    jwks.httpd = _serve_jwks(jwks)
    auth = AuthSettings(mode="on", oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks.url, ldap_url=slapd.url,
                        ldap_user_dn_template=USER_DN_TEMPLATE, ldap_group_base=GROUPS_BASE,
                        failed_sign_ins_per_minute=5, failed_bearer_per_minute=6)  # fmt: skip
    index = PgVectorIndex(postgres_url)
    engine = AnswerEngine(index, embedder, [docs.name, runbooks.name], EvidenceReranker(), None)
    state = AppState(PlatformSettings(data_dir=root / "data"), APISettings(), LLMSettings(), [docs, runbooks], index, engine,
                     SessionStore(postgres_url), postgres_url, f"http://127.0.0.1:{free_port()}/v1", auth=auth, roles=roles,
                     audit_key=b"k" * 32)  # fmt: skip
    store = KeyStore(postgres_url)
    keys = {
        who: store.create(who, role)[0]
        for who, role in (
            ("ada", "admin"),
            ("vic", "viewer"),
            ("dev", "devops"),
            ("don", "developer"),
            ("aud", "auditor"),
            ("val", "viewer"),
        )
    }
    keys["expired"] = store.create("old", "viewer", expires_in=timedelta(seconds=-1))[0]
    revoked, record = store.create("gone", "viewer")
    store.revoke(record.id)
    keys["revoked"] = revoked
    with TestClient(create_app(state)) as client:
        yield Platform(client, state, keys, docs.name, runbooks.name, jwks, signer)
    jwks.httpd.shutdown()
    store.close()


@pytest.fixture(autouse=True)
def _fresh_failure_counts(platform: Platform) -> None:
    """Each test starts with no failed sign-ins counted against the test client's address."""
    with platform.state.sessions.engine.begin() as conn:
        conn.execute(text("DELETE FROM kb_rate_limits WHERE key LIKE '%-failed:%'"))


def _paths(platform: Platform, who: str, question: str, **body: Any) -> tuple[int, list[str]]:
    response = platform.client.post("/v1/query", json={"question": question, "answer": False, **body}, headers=platform.auth(who))
    return response.status_code, [s["path"] for s in response.json().get("sources", [])]


def test_only_health_checks_answer_without_a_credential(platform: Platform) -> None:
    client = platform.client
    assert client.get("/healthz").status_code == 200
    for method, path in (("POST", "/v1/query"), ("GET", "/v1/sessions"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", f"/v1/documents/{platform.docs}/cipher-rotation.md"), ("POST", "/mcp")):  # fmt: skip
        response = client.request(method, path, json={"question": "x"})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    for who in ("expired", "revoked"):
        assert client.get("/v1/auth/me", headers=platform.auth(who)).status_code == 401
    assert client.get("/v1/auth/me", headers={"Authorization": "Bearer kb_000000000000_" + "x" * 43}).status_code == 401
    assert client.get("/v1/auth/me", headers=platform.auth("vic")).json()["roles"] == ["viewer"]


def test_a_viewer_never_retrieves_counts_or_cites_a_restricted_chunk(platform: Platform) -> None:
    for question in (SECRET_FRONT_MATTER, SECRET_FOLDER, "quokkaflux marigold cipher", "zebrastripe tangerine escrow"):
        status, paths = _paths(platform, "vic", question)
        assert status == 200 and not {"cipher-rotation.md", "escrow/holds.md"} & set(paths), paths
    # Devops reads the folder's list (it names the role), not the document naming treasury; admin reads both.
    assert "escrow/holds.md" in _paths(platform, "dev", SECRET_FOLDER)[1]
    assert "cipher-rotation.md" not in _paths(platform, "dev", SECRET_FRONT_MATTER)[1]
    assert "cipher-rotation.md" in _paths(platform, "ada", SECRET_FRONT_MATTER)[1]
    # The document itself and the collection it may not read answer like things that do not exist.
    assert platform.client.get(f"/v1/documents/{platform.docs}/escrow/holds.md", headers=platform.auth("vic")).status_code == 404
    assert platform.client.get(f"/v1/documents/{platform.docs}/escrow/holds.md", headers=platform.auth("dev")).status_code == 200
    assert _paths(platform, "vic", "rollback", collections=[platform.runbooks])[0] == 403
    assert all(not p.startswith("gateway-high") for p in _paths(platform, "vic", "How do I roll back a gateway-core deploy?")[1])
    assert any(p.endswith(".md") for p in _paths(platform, "don", "How do I roll back a gateway-core deploy?")[1])


def _mcp_search(platform: Platform, who: str, query: str) -> str:
    """A `search` tool call over the API's streamable-HTTP MCP endpoint, as an IDE agent makes it (JSON-RPC
    over the same app the other tests drive; the TestClient's event loop runs the MCP session manager)."""
    headers = {**platform.auth(who), "Accept": "application/json, text/event-stream"}

    def rpc(message: dict[str, Any], session: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
        extra = {"mcp-session-id": session} if session else {}
        # The MCP transport accepts only loopback host names (DNS-rebinding protection).
        url = "http://localhost:8000/mcp"
        response = platform.client.post(url, json={"jsonrpc": "2.0", **message}, headers={**headers, **extra})
        assert response.status_code in (200, 202), response.text
        data = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        body = (
            data[-1]
            if data
            else (response.json() if response.content and "json" in response.headers.get("content-type", "") else None)
        )
        return response.headers.get("mcp-session-id"), body

    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "ide", "version": "1"}}
    session, _ = rpc({"id": 1, "method": "initialize", "params": init})
    rpc({"method": "notifications/initialized"}, session)
    _, result = rpc({"id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": query}}}, session)
    assert result is not None and "result" in result, result
    return "".join(c.get("text", "") for c in result["result"]["content"])


def test_mcp_over_http_searches_only_what_the_caller_may_read(platform: Platform) -> None:
    assert "escrow/holds.md" in _mcp_search(platform, "dev", SECRET_FOLDER)
    assert "escrow/holds.md" not in _mcp_search(platform, "vic", SECRET_FOLDER)


def test_oidc_token_groups_map_to_roles_and_to_document_access(platform: Platform) -> None:
    token = platform.signer.sign(claims(preferred_username="tess", groups=["kb-viewers", "treasury"]))
    headers = {"Authorization": f"Bearer {token}"}
    me = platform.client.get("/v1/auth/me", headers=headers).json()
    assert me["user"] == "tess" and me["roles"] == ["viewer"] and me["method"] == "oidc"
    response = platform.client.post("/v1/query", json={"question": SECRET_FRONT_MATTER, "answer": False}, headers=headers)
    assert "cipher-rotation.md" in [s["path"] for s in response.json()["sources"]]
    wrong = platform.signer.sign(claims(aud="someone-else"))
    assert platform.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401


def test_ldap_sign_in_gives_a_session_token_with_the_directory_groups(platform: Platform) -> None:
    signed = platform.client.post("/v1/auth/login", json={"username": "alice", "password": USERS["alice"]})
    assert signed.status_code == 200, signed.text
    headers = {"Authorization": f"Bearer {signed.json()['token']}"}
    me = platform.client.get("/v1/auth/me", headers=headers).json()
    assert me["user"] == "alice" and set(me["roles"]) == {"devops", "viewer"} and me["method"] == "session"
    assert platform.client.post("/v1/auth/logout", headers=headers).status_code == 204
    assert platform.client.get("/v1/auth/me", headers=headers).status_code == 401
    bad = platform.client.post("/v1/auth/login", json={"username": "bob", "password": "wrong"})
    assert bad.status_code == 401 and "wrong" not in bad.text


def test_failed_sign_ins_are_throttled_per_client(platform: Platform) -> None:
    statuses = [platform.client.post("/v1/auth/login", json={"username": "carol", "password": f"guess-{i}"}).status_code
                for i in range(8)]  # fmt: skip
    assert statuses[:4].count(401) >= 3 and statuses[-1] == 429
    # Even the right password waits out the throttle.
    throttled = platform.client.post("/v1/auth/login", json={"username": "carol", "password": USERS["carol"]})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    # Bad bearer keys from one client end in 429s too, while a good key from the same client keeps working.
    bogus = [platform.client.get("/v1/auth/me", headers={"Authorization": f"Bearer kb_{i:012d}_" + "y" * 43}).status_code
             for i in range(7)]  # fmt: skip
    assert bogus[0] == 401 and bogus[-1] == 429
    assert platform.client.get("/v1/auth/me", headers=platform.auth("vic")).status_code == 200


def test_a_user_cannot_read_another_users_session_and_an_auditor_read_is_recorded(platform: Platform) -> None:
    sessions = platform.state.sessions
    vals = sessions.create("val", "val's question", "m")
    sessions.add(vals, "user", "What is our PCI scope?")
    client = platform.client
    assert client.get(f"/v1/sessions/{vals}", headers=platform.auth("vic")).status_code == 404
    assert client.get(f"/v1/sessions/{vals}/export", headers=platform.auth("vic")).status_code == 404
    assert client.delete(f"/v1/sessions/{vals}", headers=platform.auth("vic")).status_code == 404
    assert client.get("/v1/sessions", params={"user": "val"}, headers=platform.auth("vic")).status_code == 403
    assert vals not in [s["id"] for s in client.get("/v1/sessions", headers=platform.auth("vic")).json()["data"]]
    assert not client.get("/v1/sessions/search", params={"q": "PCI"}, headers=platform.auth("vic")).json()["data"]
    assert vals in [s["id"] for s in client.get("/v1/sessions", headers=platform.auth("val")).json()["data"]]
    read = client.get(f"/v1/sessions/{vals}", headers=platform.auth("aud"))
    assert read.status_code == 200 and read.json()["messages"][0]["content"] == "What is our PCI scope?"
    rows = list(platform.state.audit.export(None))
    assert any(r["actor"] == "aud" and r["action"] == "session_read" and r["target"] == vals for r in rows)
    assert platform.state.audit.verify().ok


def test_a_users_oldest_open_sessions_close_beyond_the_limit(platform: Platform) -> None:
    sessions = platform.state.sessions
    opened = [sessions.create("cap", f"q{i}", "m", max_open=3) for i in range(5)]
    listed = {s["id"]: s["closed"] for s in sessions.list("cap")}
    assert [listed[i] for i in opened] == [True, True, False, False, False]
    key = KeyStore(platform.state.database_url).create("cap", "viewer")[0]
    body = {"model": "default", "session_id": opened[0], "messages": [{"role": "user", "content": "more?"}]}
    closed = platform.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert closed.status_code == 409 and "closed" in closed.json()["error"]["message"]


def test_sixteen_concurrent_clients_only_the_one_over_its_limit_gets_429(platform: Platform) -> None:
    store = KeyStore(platform.state.database_url)
    users = {f"load{i}": store.create(f"load{i}", "limited")[0] for i in range(16)}
    plan = {user: (30 if user == "load0" else 8) for user in users}  # the limit is 12 a minute

    async def run() -> dict[str, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=platform.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kb") as http:

            async def one(user: str) -> httpx.Response:
                return await http.get("/v1/auth/me", headers={"Authorization": f"Bearer {users[user]}"})

            calls = [(u, one(u)) for u, n in plan.items() for _ in range(n)]
            done = await asyncio.gather(*(c for _, c in calls))
        by_user: dict[str, list[httpx.Response]] = {u: [] for u in users}
        for (user, _), response in zip(calls, done, strict=True):
            by_user[user].append(response)
        return by_user

    responses = asyncio.run(run())
    heavy = [r.status_code for r in responses["load0"]]
    assert heavy.count(429) >= 30 - 12 - 1 and heavy.count(200) <= 12 + 1, heavy
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses["load0"] if r.status_code == 429)
    assert all(r.status_code == 200 for user, rs in responses.items() if user != "load0" for r in rs)


def test_admin_api_manages_keys_and_the_audit_chain_holds(platform: Platform) -> None:
    client = platform.client
    assert client.post("/v1/admin/keys", json={"user": "x", "role": "viewer"}, headers=platform.auth("vic")).status_code == 403
    created = client.post("/v1/admin/keys", json={"user": "newbie", "role": "viewer"}, headers=platform.auth("ada")).json()
    assert client.get("/v1/auth/me", headers={"Authorization": f"Bearer {created['key']}"}).json()["user"] == "newbie"
    listed = client.get("/v1/admin/keys", headers=platform.auth("ada")).json()["data"]
    assert created["id"] in [k["id"] for k in listed] and all("key" not in k and "hash" not in k for k in listed)
    assert client.delete(f"/v1/admin/keys/{created['id']}", headers=platform.auth("ada")).status_code == 204
    assert client.get("/v1/auth/me", headers={"Authorization": f"Bearer {created['key']}"}).status_code == 401
    pasted = "Why does login fail with password=Hunter2Hunter2xyz and AKIAIOSFODNN7EXAMPLE?"
    assert client.post("/v1/query", json={"question": pasted, "answer": False}, headers=platform.auth("dev")).status_code == 200
    rows = list(platform.state.audit.export(None))
    assert {"admin.key_create", "admin.key_revoke", "query", "sign_in", "sign_in_failed"} <= {r["action"] for r in rows}
    logged = json.dumps(rows, default=str)
    assert "Why does login fail" in logged and "Hunter2Hunter2xyz" not in logged and "AKIAIOSFODNN7EXAMPLE" not in logged
    assert created["key"] not in json.dumps(rows, default=str)
    assert platform.state.audit.verify().ok
