"""The forwarded user on the real embedded PostgreSQL, through the real app (sign-in on): a gateway key (Open WebUI's)
acts as the user its headers name, with the roles roles.yaml `users:` gives them, capped by the key's own role and
rate-limited per user; forwarded headers on any other credential are ignored and audited; with a JWT secret only
Open WebUI's signed token counts. The index is empty and there is no LLM: `answer: false` retrieves nothing,
which is enough to see who asked and which collections they searched."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.state import AppState
from assets.collections import CollectionSpec
from assets.index import PgVectorIndex
from kb.access.keys import KeyStore
from kb.access.roles import RolesConfig, RoleSpec, load_roles
from kb.settings import PROJECT_ROOT, APISettings, AuthSettings, LLMSettings, PlatformSettings
from query_engine.engine import AnswerEngine
from query_engine.memory import SessionStore
from query_engine.rerank import EvidenceReranker
from tests.conftest import free_port

SECRET = "forwarded-user-test-secret-0123456789abcdef"
ALL = ["code_snippets", "incidents", "k8s_configs", "runbooks", "technical_docs"]
USERS = {"Vera@Example.org": ["viewer"], "ada@example.org": ["admin"], "lim1@example.org": ["limited"],
         "lim2@example.org": ["limited"]}  # fmt: skip


@dataclass
class Platform:
    client: TestClient
    database: str
    keys: dict[str, str]

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def plain(email: str, role: str = "user", name: str = "Vera Núñez", user_id: str = "0b1c") -> dict[str, str]:
    """The headers Open WebUI 0.12.4 forwards without a JWT secret (include_user_info_headers)."""
    return {"X-OpenWebUI-User-Name": quote(name, safe=" "), "X-OpenWebUI-User-Id": user_id, "X-OpenWebUI-User-Email": email,
            "X-OpenWebUI-User-Role": role}  # fmt: skip


def signed(email: str, role: str = "user", secret: str = SECRET, lifetime_s: int = 300) -> dict[str, str]:
    """The header Open WebUI 0.12.4 forwards with FORWARD_USER_INFO_HEADER_JWT_SECRET set (_mint_forward_user_jwt)."""
    now = int(time.time())
    claims = {
        "sub": "0b1c",
        "email": email,
        "name": "Vera",
        "role": role,
        "iss": "open-webui",
        "iat": now,
        "exp": now + lifetime_s,
    }
    return {"X-OpenWebUI-User-Jwt": jwt.encode(claims, secret, algorithm="HS256")}


def audit_rows(database: str, action: str) -> list[tuple[str, str | None, str, dict[str, Any]]]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT actor, target, outcome, detail FROM kb_audit WHERE action = %s ORDER BY seq", (action,))
        return [(r[0], r[1], r[2], r[3]) for r in rows.fetchall()]


def error(response: Any) -> str:
    message: str = response.json()["error"]["message"]
    return message


@pytest.fixture
def platform_with(database: str, tmp_path: Path, embedder: Any, sample_specs: list[CollectionSpec]
                  ) -> Iterator[Callable[..., Any]]:  # fmt: skip
    """Starts the app on `database` with the given auth settings; keys: an admin, a viewer, and the Open WebUI
    gateway key (devops: every collection, not admin) that the admin creates through the API."""
    shipped = load_roles(PROJECT_ROOT / "roles.yaml")
    roles = RolesConfig(roles={**shipped.roles, "limited": RoleSpec(collections=("technical_docs",), requests_per_minute=3)},
                        groups=shipped.groups, users={k: tuple(v) for k, v in USERS.items()})  # fmt: skip
    store, index, keys = SessionStore(database), PgVectorIndex(database), KeyStore(database)
    tokens = {"admin": keys.create("root", "admin")[0], "val": keys.create("val", "viewer")[0]}

    @contextmanager
    def start(auth: AuthSettings) -> Iterator[Platform]:
        engine = AnswerEngine(index, embedder, [s.name for s in sample_specs], EvidenceReranker(), None)
        state = AppState(PlatformSettings(data_dir=tmp_path), APISettings(), LLMSettings(), sample_specs, index, engine, store,
                         database, f"http://127.0.0.1:{free_port()}/v1", auth=auth, roles=roles,
                         audit_key=b"forwarded-user-test-audit-key-32")  # fmt: skip
        with TestClient(create_app(state)) as client:
            platform = Platform(client, database, dict(tokens))
            if "openwebui" not in tokens:
                created = client.post("/v1/admin/keys", json={"user": "openwebui", "role": "devops", "gateway": True},
                                      headers=platform.bearer("admin"))  # fmt: skip
                assert created.status_code == 201, created.text
                tokens["openwebui"] = created.json()["key"]
            platform.keys = dict(tokens)
            yield platform

    try:
        yield start
    finally:
        index.close()
        keys.close()
        store.engine.dispose()


@pytest.fixture
def platform(platform_with: Callable[..., Any]) -> Iterator[Platform]:
    """Plain forwarded headers trusted from the gateway key (no JWT secret)."""
    with platform_with(AuthSettings(mode="on")) as started:
        yield started


def me(platform: Platform, who: str, headers: dict[str, str] | None = None) -> Any:
    return platform.client.get("/v1/auth/me", headers={**platform.bearer(who), **(headers or {})})


def test_an_admin_creates_a_gateway_key_that_the_listing_marks(platform: Platform) -> None:
    listed = platform.client.get("/v1/admin/keys", headers=platform.bearer("admin")).json()["data"]
    assert {k["user"]: k["gateway"] for k in listed} == {"openwebui": True, "val": False, "root": False}
    created = audit_rows(platform.database, "admin.key_create")
    assert [(actor, detail) for actor, _, _, detail in created] == [
        ("root", {"user": "openwebui", "role": "devops", "gateway": True})
    ]
    assert [k.gateway for k in KeyStore(platform.database).list("openwebui")] == [True]


def test_the_gateway_key_acts_as_the_forwarded_user_with_their_roles(platform: Platform) -> None:
    vera = me(platform, "openwebui", plain("Vera@Example.org", role="admin"))
    assert vera.status_code == 200, vera.text
    assert vera.json() == {"user": "vera@example.org", "method": "forwarded", "roles": ["viewer"],
                           "collections": ["technical_docs"], "connectors": ["docs"], "requests_per_minute": 100, "admin": False,
                           "read_others_sessions": False, "all_documents": False, "via": "openwebui"}  # fmt: skip
    # Mapped to admin, but the gateway key is devops: every collection, and still not an admin.
    ada = me(platform, "openwebui", plain("ada@example.org")).json()
    assert (ada["roles"], ada["collections"], ada["admin"], ada["all_documents"]) == (["admin"], ALL, False, False)
    assert (
        platform.client.get("/v1/admin/keys", headers={**platform.bearer("openwebui"), **plain("ada@example.org")}).status_code
        == 403
    )
    # Open WebUI's own admin role maps to nothing: an unmapped user reads nothing.
    eve = me(platform, "openwebui", plain("eve@example.org", role="admin")).json()
    assert (eve["user"], eve["roles"], eve["collections"], eve["connectors"]) == ("eve@example.org", [], [], [])
    # Without forwarded headers the key is its own user.
    itself = me(platform, "openwebui").json()
    assert (itself["user"], itself["method"], itself["roles"], itself["via"]) == ("openwebui", "api_key", ["devops"], None)


def test_a_forwarded_viewer_searches_only_technical_docs(platform: Platform) -> None:
    headers = {**platform.bearer("openwebui"), **plain("vera@example.org")}
    question = {"question": "How do I rotate the API gateway certificate?", "answer": False}
    answered = platform.client.post("/v1/query", json=question, headers=headers)
    assert answered.status_code == 200, answered.text
    assert [(actor, detail["collections"]) for actor, _, _, detail in audit_rows(platform.database, "query")] == [
        ("vera@example.org", ["technical_docs"])
    ]
    refused = platform.client.post("/v1/query", json={"question": "rollback", "answer": False, "collections": ["runbooks"]},
                                   headers=headers)  # fmt: skip
    assert refused.status_code == 403 and "may not read collection(s) runbooks" in error(refused)
    unmapped = platform.client.post("/v1/query", json={"question": "rollback", "answer": False},
                                    headers={**platform.bearer("openwebui"), **plain("eve@example.org")})  # fmt: skip
    assert unmapped.status_code == 403 and "may not read any collection" in error(unmapped)


def test_a_key_that_is_no_gateway_ignores_forwarded_headers_and_the_audit_log_says_so(platform: Platform) -> None:
    claim = plain("ada@example.org", role="admin")
    response = me(platform, "val", claim)
    assert response.status_code == 200
    assert (response.json()["user"], response.json()["roles"], response.json()["via"]) == ("val", ["viewer"], None)
    key_id = platform.keys["val"].split("_")[1]
    assert audit_rows(platform.database, "forwarded_user_ignored") == [
        ("val", key_id, "denied", {"reason": "an API key that is not a gateway key", "claimed_user": "ada@example.org",
                                   "claimed_role": "admin", "headers": sorted(h.lower() for h in claim)})
    ]  # fmt: skip
    # A sign-in session is no gateway either; a signed claim is recorded without the token.
    session = KeyStore(platform.database).create("sam", "", kind="session", groups=("kb-viewers",))[0]
    token = signed("ada@example.org", role="admin")
    as_session = platform.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {session}", **token})
    assert as_session.json()["user"] == "sam"
    last = audit_rows(platform.database, "forwarded_user_ignored")[-1]
    assert last[0] == "sam" and last[3]["reason"] == "a sign-in session that is not a gateway key"
    assert last[3]["claimed_user"] == "ada@example.org" and token["X-OpenWebUI-User-Jwt"] not in json.dumps(last)


def test_with_a_jwt_secret_only_open_webuis_signed_user_counts(platform_with: Callable[..., Any]) -> None:
    with platform_with(AuthSettings(mode="on", forwarded_jwt_secret=SECRET)) as platform:
        good = me(platform, "openwebui", signed("Vera@Example.org"))
        assert good.status_code == 200, good.text
        assert (good.json()["user"], good.json()["roles"], good.json()["via"]) == ("vera@example.org", ["viewer"], "openwebui")

        forged = me(platform, "openwebui", plain("ada@example.org", role="admin"))
        assert forged.status_code == 403 and "plain forwarded user headers" in error(forged)
        assert "KB_AUTH_FORWARDED_JWT_SECRET is set" in error(forged)
        expired = me(platform, "openwebui", signed("vera@example.org", lifetime_s=-120))
        assert expired.status_code == 401 and "has expired" in error(expired)
        wrong = me(platform, "openwebui", signed("ada@example.org", secret="not-the-shared-secret-0123456789abcdef"))
        assert wrong.status_code == 401 and "signature that does not match" in error(wrong)

        refusals = audit_rows(platform.database, "forwarded_user_refused")
        assert [(actor, outcome, detail["claimed_user"]) for actor, _, outcome, detail in refusals] == [
            ("openwebui", "denied", "ada@example.org"), ("openwebui", "denied", "vera@example.org"),
            ("openwebui", "denied", "ada@example.org")
        ]  # fmt: skip
        assert "plain forwarded user headers" in refusals[0][3]["reason"] and "expired" in refusals[1][3]["reason"]
        with psycopg.connect(platform.database) as conn:
            everything = json.dumps([r[0] for r in conn.execute("SELECT detail FROM kb_audit").fetchall()])
        assert "eyJ" not in everything  # no token (a JWT's base64url header) in any audit row


def test_without_a_jwt_secret_a_signed_user_cannot_be_checked(platform: Platform) -> None:
    response = me(platform, "openwebui", signed("vera@example.org"))
    assert response.status_code == 403 and "KB_AUTH_FORWARDED_JWT_SECRET is not set" in error(response)


def test_each_forwarded_user_has_their_own_rate_limit_bucket(platform: Platform) -> None:
    one, two = plain("lim1@example.org"), plain("lim2@example.org")
    assert [me(platform, "openwebui", one).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert me(platform, "openwebui", two).status_code == 200  # another Open WebUI user, same gateway key
    assert me(platform, "openwebui").status_code == 200  # the gateway's own bucket is another still
    with psycopg.connect(platform.database) as conn:
        counts = dict(conn.execute("SELECT key, sum(count) FROM kb_rate_limits WHERE key LIKE 'user:%' GROUP BY key").fetchall())
    assert counts["user:lim1@example.org"] == 3 and counts["user:lim2@example.org"] == 1
    # Only its one own request: the forwarded ones were never counted under the gateway key's user.
    assert counts["user:openwebui"] == 1


def test_kb_keys_create_gateway_makes_a_gateway_key(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kb.keys_cli import keys_app

    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path))  # the CLI's audit key file goes there
    runner = CliRunner()
    created = runner.invoke(keys_app, ["create", "--user", "openwebui", "--role", "developer", "--gateway", "--json"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["gateway"] is True
    plain_key = runner.invoke(keys_app, ["create", "--user", "script", "--role", "viewer"])
    assert plain_key.exit_code == 0 and plain_key.output.startswith("API key for script"), plain_key.output
    listed = runner.invoke(keys_app, ["list", "--json"])
    assert {k["user"]: k["gateway"] for k in json.loads(listed.output)} == {"openwebui": True, "script": False}
    text_listing = runner.invoke(keys_app, ["list"]).output.splitlines()
    assert [line.endswith("gateway") for line in text_listing] == [False, True]  # newest first
    assert [d for _, _, _, d in audit_rows(database, "admin.key_create")][0] == {"user": "openwebui", "role": "developer",
                                                                                 "gateway": True}  # fmt: skip
