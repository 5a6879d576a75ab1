"""The forwarded user as pure functions: Open WebUI's signed (HS256 JWT) and plain headers, what is refused and
why, the roles a forwarded user gets from roles.yaml `users:`, and the gateway key's access capping theirs."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from kb.access.forwarded import (
    ForwardedRefused,
    ForwardedUser,
    HeaderNames,
    claimed,
    forwarded_user,
    forwarded_values,
)
from kb.access.identity import Identity
from kb.access.keys import KeyRecord
from kb.access.roles import Access, RolesConfig, load_roles
from kb.settings import PROJECT_ROOT, AuthSettings

SECRET = "open-webui-forward-secret-0123456789abcdef"
NAMES = HeaderNames()
COLLECTIONS = ["technical_docs", "code_snippets", "incidents", "k8s_configs", "runbooks"]
CONNECTORS = ["docs", "gitea", "cicd", "kubernetes", "loki"]


def mint(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    """A token as Open WebUI 0.12's _mint_forward_user_jwt makes it (claims and lifetime), with `overrides`."""
    now = int(time.time())
    payload = {"sub": "2d95199f-1f70-4690-9b4a-8f98280ca9da", "email": "Ana.Lima@Example.org", "name": "Ana Lima",
               "role": "admin", "iss": "open-webui", "iat": now, "exp": now + 300}  # fmt: skip
    payload.update(overrides)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm=algorithm)


def plain(name: str = "Ana Lima", email: str | None = "Ana.Lima@Example.org", user_id: str = "u-1",
          role: str = "user") -> dict[str, str]:  # fmt: skip
    """Open WebUI's plain headers (include_user_info_headers): the name URL-quoted, spaces kept."""
    headers = {"X-OpenWebUI-User-Name": quote(name.strip(), safe=" "), "X-OpenWebUI-User-Id": user_id,
               "X-OpenWebUI-User-Role": role}  # fmt: skip
    if email is not None:
        headers["X-OpenWebUI-User-Email"] = email
    return headers


def resolve(headers: dict[str, str], secret: str | None = None, names: HeaderNames = NAMES) -> ForwardedUser | None:
    return forwarded_user(forwarded_values(headers.items(), names), names, secret)


def refusal(headers: dict[str, str], secret: str | None = None) -> ForwardedRefused:
    with pytest.raises(ForwardedRefused) as caught:
        resolve(headers, secret)
    return caught.value


def test_a_signed_user_acts_as_their_lower_cased_email_and_keeps_open_webuis_role_aside() -> None:
    user = resolve({"X-OpenWebUI-User-Jwt": mint()}, SECRET)
    assert user == ForwardedUser("ana.lima@example.org", "2d95199f-1f70-4690-9b4a-8f98280ca9da", "ana.lima@example.org",
                                 "Ana Lima", "admin", signed=True)  # fmt: skip
    identity = user.identity()
    # Open WebUI's "admin" is not ours: the identity carries no roles or groups of its own.
    assert (identity.user, identity.method, identity.roles, identity.groups) == ("ana.lima@example.org", "forwarded", (), ())


def test_a_token_without_email_falls_back_to_the_open_webui_user_id() -> None:
    user = resolve({"x-openwebui-user-jwt": mint(email="")}, SECRET)
    assert user is not None and user.user == "2d95199f-1f70-4690-9b4a-8f98280ca9da" and user.email is None


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: mint(exp=int(time.time()) - 120), "has expired"),
        (lambda: mint(secret="another-secret-of-at-least-32-bytes!!"), "signature that does not match"),
        (lambda: mint(iss="someone-else"), "was not issued by Open WebUI"),
        (lambda: mint(exp=None), "lacks the required claim 'exp'"),
        (lambda: mint(iss=None), "lacks the required claim 'iss'"),
        (lambda: mint(algorithm="HS512"), "is not signed with HS256"),
        (lambda: mint(iat=int(time.time()) + 3600), "not valid yet"),
        (lambda: mint(email=None, sub=None), "neither an 'email' nor a 'sub' claim"),
        (lambda: mint(email=42), "'email' claim"),
        (lambda: mint(email="not-an-address"), "not an e-mail address"),
        (lambda: "not.a-token", "is malformed"),
        (lambda: "x" * 9000, "is malformed"),
    ],
)
def test_a_bad_token_is_refused_401_saying_why(make: Callable[[], str], says: str) -> None:
    token = make()  # minted when the test runs: a token made at collection would expire before a long suite reaches it
    refused = refusal({"X-OpenWebUI-User-Jwt": token}, SECRET)
    assert refused.status == 401 and says in str(refused), str(refused)
    assert token not in str(refused)


def test_a_token_just_past_its_expiry_is_accepted_within_the_leeway() -> None:
    user = resolve({"X-OpenWebUI-User-Jwt": mint(exp=int(time.time()) - 10)}, SECRET)
    assert user is not None and user.user == "ana.lima@example.org"


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


def test_alg_none_and_asymmetric_tokens_are_refused() -> None:
    now = int(time.time())
    claims = {"sub": "u-1", "email": "mallory@example.org", "iss": "open-webui", "iat": now, "exp": now + 300}
    none = _unsigned(claims, {"alg": "none", "typ": "JWT"})
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs256 = jwt.encode(claims, rsa_key, algorithm="RS256")
    for token in (none, rs256):
        refused = refusal({"X-OpenWebUI-User-Jwt": token}, SECRET)
        assert refused.status == 401 and "is not signed with HS256" in str(refused)


def test_with_a_secret_plain_headers_are_refused_403() -> None:
    refused = refusal(plain(), SECRET)
    assert refused.status == 403
    assert "plain forwarded user headers" in str(refused) and "KB_AUTH_FORWARDED_JWT_SECRET is set" in str(refused)


def test_without_a_secret_a_token_cannot_be_checked_and_is_refused_403() -> None:
    refused = refusal({"X-OpenWebUI-User-Jwt": mint(), **plain()})
    assert refused.status == 403 and "KB_AUTH_FORWARDED_JWT_SECRET is not set" in str(refused)


def test_plain_headers_name_the_user_by_email_and_unquote_the_name() -> None:
    user = resolve(plain(name="José Müller, Ops/Платежи 支付", email=" Jose.Muller@Example.ORG "))
    assert user == ForwardedUser("jose.muller@example.org", "u-1", "jose.muller@example.org", "José Müller, Ops/Платежи 支付",
                                 "user", signed=False)  # fmt: skip


def test_plain_headers_without_email_act_as_the_user_id() -> None:
    user = resolve(plain(email=None, user_id="671fa9fb-0000-4000-8000-000000000001"))
    assert user is not None and user.user == "671fa9fb-0000-4000-8000-000000000001"
    empty = resolve({**plain(email=None), "X-OpenWebUI-User-Email": "  "})
    assert empty is not None and empty.user == "u-1"


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-OpenWebUI-User-Name": "Ana", "X-OpenWebUI-User-Role": "user"}, "names no user"),
        (plain(email="admin"), "not an e-mail address"),
        (plain(email="ana lima@example.org"), "not an e-mail address"),
        (plain(email=None, user_id="a b"), "not a user id"),
        (plain(email=None, user_id="u" * 201), "not a user id"),
    ],
)
def test_plain_headers_that_name_no_usable_user_are_refused_401(headers: dict[str, str], says: str) -> None:
    refused = refusal(headers)
    assert refused.status == 401 and says in str(refused), str(refused)


def test_a_forwarded_header_sent_twice_is_refused() -> None:
    pairs = [("x-openwebui-user-email", "ana@example.org"), ("x-openwebui-user-email", "admin@example.org")]
    values = forwarded_values(pairs, NAMES)
    assert values == {"x-openwebui-user-email": ("ana@example.org", "admin@example.org")}
    with pytest.raises(ForwardedRefused, match="came more than once"):
        forwarded_user(values, NAMES, None)


def test_no_forwarded_header_means_no_forwarded_user_and_other_headers_do_not_count() -> None:
    assert resolve({"Authorization": "Bearer kb_x", "X-OpenWebUI-Chat-Id": "c-1", "X-OpenWebUI-User-Email": ""}) is None
    assert resolve({}, SECRET) is None


def test_header_names_are_configurable_and_case_blind() -> None:
    names = HeaderNames.of("X-Gw-Jwt", "X-Gw-Id", "X-Gw-Email", "X-Gw-Name", "X-Gw-Role")
    assert resolve(plain(), names=names) is None  # Open WebUI's names no longer count
    user = resolve({"X-GW-EMAIL": "Bob@Example.org", "x-gw-id": "b-1"}, names=names)
    assert user is not None and user.user == "bob@example.org"
    signed = resolve({"x-gw-jwt": mint()}, SECRET, names=names)
    assert signed is not None and signed.signed


def test_what_the_audit_log_gets_is_the_claim_never_the_token() -> None:
    token = mint()
    record = claimed(forwarded_values({"X-OpenWebUI-User-Jwt": token}.items(), NAMES), NAMES)
    assert record == {"claimed_user": "ana.lima@example.org", "claimed_role": "admin"}
    assert token not in json.dumps(record)
    assert claimed(forwarded_values(plain(email=None).items(), NAMES), NAMES) == {"claimed_user": "u-1", "claimed_role": "user"}
    garbage = claimed(forwarded_values({"X-OpenWebUI-User-Jwt": "a.b.c"}.items(), NAMES), NAMES)
    assert garbage == {"claimed_user": None, "claimed_role": None}


def _roles(users: dict[str, list[str]]) -> RolesConfig:
    shipped = load_roles(PROJECT_ROOT / "roles.yaml")
    return RolesConfig.model_validate({**shipped.model_dump(), "users": users})


def test_roles_yaml_users_map_names_case_blind_to_roles_for_any_identity() -> None:
    roles = _roles({"Ana.Lima@Example.org": ["viewer"], "ops-bot": ["devops"]})
    assert roles.users == {"ana.lima@example.org": ("viewer",), "ops-bot": ("devops",)}
    assert roles.roles_of(Identity("ana.lima@example.org", "forwarded")) == ("viewer",)
    # Added to a key's own role and to its groups' roles, without duplicates.
    assert roles.roles_of(Identity("OPS-BOT", "api_key", roles=("viewer",))) == ("viewer", "devops")
    assert roles.roles_of(Identity("ops-bot", "oidc", groups=("kb-devops",))) == ("devops",)


def test_a_forwarded_user_with_no_mapping_reads_nothing() -> None:
    access = _roles({}).access(Identity("eve@example.org", "forwarded"), COLLECTIONS, CONNECTORS)
    assert access.roles == () and access.collections == frozenset() and access.connectors == frozenset()
    assert not access.admin and access.groups == () and access.requests_per_minute == 100
    with pytest.raises(PermissionError, match="none may not read any collection"):
        access.readable(None)


def test_a_users_mapping_naming_an_undefined_role_or_a_name_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="users map to undefined role"):
        _roles({"ana@example.org": ["superuser"]})
    with pytest.raises(ValidationError, match="named twice"):
        _roles({"ana@example.org": ["viewer"], "ANA@example.org": ["developer"]})


def _access(collections: set[str], connectors: set[str], groups: tuple[str, ...] | None, admin: bool = False,
            others: bool = False, rpm: int = 100) -> Access:  # fmt: skip
    return Access(
        "u", ("r",), frozenset(collections), frozenset(connectors), groups, rpm, read_others_sessions=others, admin=admin
    )


def test_the_gateway_keys_access_caps_the_forwarded_users() -> None:
    user = _access({"technical_docs", "runbooks", "incidents"}, {"docs", "gitea"}, None, admin=True, others=True, rpm=40)
    gateway = _access({"technical_docs", "runbooks"}, {"docs", "cicd"}, ("devops", "viewer"), admin=False, others=True, rpm=300)
    capped = user.capped_by(gateway)
    assert capped.collections == {"technical_docs", "runbooks"} and capped.connectors == {"docs"}
    assert capped.groups == ("devops", "viewer")  # all documents only if both
    assert not capped.admin and capped.read_others_sessions
    assert (capped.user, capped.roles, capped.requests_per_minute) == ("u", ("r",), 40)  # the user's own, not the gateway's
    both_all = _access(set(), set(), None, admin=True).capped_by(_access(set(), set(), None, admin=True))
    assert both_all.groups is None and both_all.admin
    assert _access(set(), set(), ("viewer", "treasury")).capped_by(_access(set(), set(), ("viewer", "devops"))).groups == (
        "viewer",
    )
    assert _access(set(), set(), ("viewer",)).capped_by(_access(set(), set(), None)).groups == ("viewer",)


def test_a_forwarded_viewer_through_an_admin_gateway_reads_what_a_viewer_reads() -> None:
    roles = _roles({"bob@example.org": ["viewer"], "dora@example.org": ["devops"]})
    user = roles.access(Identity("bob@example.org", "forwarded"), COLLECTIONS, CONNECTORS)
    gateway = roles.access(Identity("openwebui", "api_key", roles=("admin",)), COLLECTIONS, CONNECTORS)
    capped = user.capped_by(gateway)
    assert capped.readable(None) == ["technical_docs"] and capped.connectors == {"docs"} and not capped.admin
    developer_gateway = roles.access(Identity("openwebui", "api_key", roles=("developer",)), COLLECTIONS, CONNECTORS)
    devops = roles.access(Identity("dora@example.org", "forwarded"), COLLECTIONS, CONNECTORS)
    assert devops.capped_by(developer_gateway).readable(None) == ["code_snippets", "runbooks", "technical_docs"]


def test_auth_settings_read_the_secret_and_refuse_a_short_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_AUTH_FORWARDED_JWT_SECRET", SECRET)
    monkeypatch.setenv("KB_AUTH_FORWARDED_USER_EMAIL_HEADER", "X-Gw-Email")
    settings = AuthSettings()
    assert settings.forwarded_jwt_secret is not None and settings.forwarded_jwt_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert settings.forwarded_header_names() == ("X-OpenWebUI-User-Jwt", "X-OpenWebUI-User-Id", "X-Gw-Email",
                                                 "X-OpenWebUI-User-Name", "X-OpenWebUI-User-Role")  # fmt: skip
    monkeypatch.setenv("KB_AUTH_FORWARDED_JWT_SECRET", "")
    assert AuthSettings().forwarded_jwt_secret is None
    monkeypatch.setenv("KB_AUTH_FORWARDED_JWT_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        AuthSettings()
    monkeypatch.delenv("KB_AUTH_FORWARDED_JWT_SECRET")
    monkeypatch.setenv("KB_AUTH_FORWARDED_USER_EMAIL_HEADER", "X-OpenWebUI-User-Id")
    with pytest.raises(ValidationError, match="distinct HTTP header names"):
        AuthSettings()


def test_a_key_record_says_whether_it_is_a_gateway() -> None:
    now = datetime.now(UTC)
    record = KeyRecord("0123456789ab", "openwebui", "developer", "api_key", now, None, None, None, None, (), True)
    assert record.as_dict()["gateway"] is True
    assert KeyRecord("0123456789ab", "ana", "viewer", "api_key", now, None, None, None, None).as_dict()["gateway"] is False
