"""The forwarded user: who a trusted gateway says is asking, when it calls with its own key for many people.

Open WebUI (ENABLE_FORWARD_USER_INFO_HEADERS=true) calls with one key for all its users and names the user in its
headers: plain ones (X-OpenWebUI-User-Id, -Name URL-quoted, -Email, -Role) or, when FORWARD_USER_INFO_HEADER_JWT_SECRET
is set there, one HS256 JWT (X-OpenWebUI-User-Jwt: sub, email, name, role, iss "open-webui", iat, exp). Only a
gateway key's headers count (api/auth.py). With a JWT secret configured here only a valid JWT is accepted, so a
leaked gateway key alone cannot act as anyone; without one the plain headers are trusted from a gateway key.

The acting user is the lower-cased e-mail (the Open WebUI user id when there is none); roles come from roles.yaml
`users:` only. Open WebUI's own role (admin/user) is recorded, never mapped: its admins are not ours."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jwt

from kb.access.identity import Identity, Method

ISSUER = "open-webui"
ALGORITHM = "HS256"
LEEWAY_S = 30  # clock skew between Open WebUI's host and this one; its tokens live 300 s
MAX_JWT_CHARS = 8192  # a real token is ~300 characters; bounds the work a header can ask for
MAX_NAME_CHARS = 200  # as an API key's user
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRINTABLE = re.compile(r"[^\x00-\x20\x7f]+")  # one word: no spaces, no control characters
FORWARDED: Method = "forwarded"  # what Identity.method says for these users

# Most specific first: pyjwt's errors form a hierarchy (InvalidSignatureError is a DecodeError, all are InvalidTokenError).
_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "has expired (check the clocks of Open WebUI's host and this one)"),
    (jwt.ImmatureSignatureError, "is not valid yet (its iat or nbf is in the future)"),
    (jwt.InvalidIssuedAtError, "has an issue time (iat) that is not valid"),
    (jwt.InvalidIssuerError, f"was not issued by Open WebUI (iss must be {ISSUER!r})"),
    (jwt.InvalidAlgorithmError, f"is not signed with {ALGORITHM}"),
    (
        jwt.InvalidSignatureError,
        "has a signature that does not match KB_AUTH_FORWARDED_JWT_SECRET "
        "(it must equal Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET)",
    ),  # fmt: skip
    (jwt.DecodeError, "is malformed"),
    (jwt.InvalidTokenError, "is not valid"),
)


class ForwardedRefused(Exception):
    """The forwarded user cannot be accepted: 401 (a bad or expired token, headers naming no user) or 403 (headers of
    the kind this server is not set up to trust). The message is safe to show: it never echoes a token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HeaderNames:
    """The forwarded user's header names, lower-cased (the defaults are Open WebUI's)."""

    jwt: str = "x-openwebui-user-jwt"
    user_id: str = "x-openwebui-user-id"
    email: str = "x-openwebui-user-email"
    name: str = "x-openwebui-user-name"
    role: str = "x-openwebui-user-role"

    @classmethod
    def of(cls, jwt: str, user_id: str, email: str, name: str, role: str) -> HeaderNames:
        return cls(*(h.strip().lower() for h in (jwt, user_id, email, name, role)))

    def plain(self) -> tuple[str, ...]:
        return (self.user_id, self.email, self.name, self.role)

    def all(self) -> tuple[str, ...]:
        return (self.jwt, *self.plain())


@dataclass(frozen=True)
class ForwardedUser:
    """A user a gateway forwarded: `user` is who the request acts as; `gateway_role` is the gateway's own role
    for them (Open WebUI's admin/user), kept for the audit log only."""

    user: str
    user_id: str | None
    email: str | None
    name: str | None
    gateway_role: str | None
    signed: bool

    def identity(self) -> Identity:
        # No roles or groups of its own: roles.yaml `users:` maps the name (RolesConfig.roles_of).
        return Identity(self.user, FORWARDED)


def forwarded_values(headers: Iterable[tuple[str, str]], names: HeaderNames) -> dict[str, tuple[str, ...]]:
    """Every non-empty value of each forwarded user header the request carries, by lower-cased name."""
    wanted = set(names.all())
    found: dict[str, tuple[str, ...]] = {}
    for key, value in headers:
        name = key.lower()
        if name in wanted and value.strip():
            found[name] = (*found.get(name, ()), value.strip())
    return found


def forwarded_user(values: dict[str, tuple[str, ...]], names: HeaderNames, jwt_secret: str | None) -> ForwardedUser | None:
    """The user a gateway key's request forwards (`values` from `forwarded_values`), or None when it forwards none.
    With `jwt_secret` only a valid JWT is accepted (403 for plain headers); without, only plain headers (403 for a
    JWT this server cannot check)."""
    if not values:
        return None
    single = _single(values)
    token = single.get(names.jwt)
    if jwt_secret is not None:
        if token is None:
            raise ForwardedRefused(403, f"plain forwarded user headers ({', '.join(sorted(single))}) are refused: this server "
                                   f"accepts only a signed {names.jwt} (KB_AUTH_FORWARDED_JWT_SECRET is set); set Open WebUI's "
                                   "FORWARD_USER_INFO_HEADER_JWT_SECRET to the same secret")  # fmt: skip
        return from_jwt(token, jwt_secret, names.jwt)
    if token is not None:
        raise ForwardedRefused(403, f"{names.jwt} cannot be checked: KB_AUTH_FORWARDED_JWT_SECRET is not set on this server; "
                               "set it to Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET")  # fmt: skip
    return from_plain(single, names)


def _single(values: dict[str, tuple[str, ...]]) -> dict[str, str]:
    # A proxy that appends a header must not let the client's own copy win, nor lose it: twice is refused.
    twice = sorted(name for name, all_values in values.items() if len(all_values) > 1)
    if twice:
        raise ForwardedRefused(401, f"the forwarded user header(s) {', '.join(twice)} came more than once")
    return {name: all_values[0] for name, all_values in values.items()}


def from_plain(values: dict[str, str], names: HeaderNames) -> ForwardedUser:
    """The user named by plain headers (as `forwarded_values` returns them); Open WebUI URL-quotes the name."""
    user_id, email = _word(values.get(names.user_id), names.user_id), _email(values.get(names.email), names.email)
    name = values.get(names.name)
    user = acting_user(email, user_id, f"send {names.email} or {names.user_id}")
    return ForwardedUser(user, user_id, email, unquote(name)[:MAX_NAME_CHARS] if name else None, _role(values.get(names.role)),
                         signed=False)  # fmt: skip


def from_jwt(token: str, secret: str, header: str = HeaderNames.jwt) -> ForwardedUser:
    """The user an Open WebUI forwarded-user JWT names: HS256 only, iss "open-webui", exp required."""
    claims = verify_jwt(token, secret, header)
    user_id, email = (
        _word(_claim(claims, "sub", header), f"{header} sub"),
        _email(_claim(claims, "email", header), f"{header} email"),
    )
    name = _claim(claims, "name", header)
    user = acting_user(email, user_id, f"the token ({header}) has neither an 'email' nor a 'sub' claim")
    return ForwardedUser(user, user_id, email, name[:MAX_NAME_CHARS] if name else None, _role(_claim(claims, "role", header)),
                         signed=True)  # fmt: skip


def verify_jwt(token: str, secret: str, header: str = HeaderNames.jwt) -> dict[str, Any]:
    """The claims of a valid token; ForwardedRefused (401) saying what is wrong otherwise."""
    if len(token) > MAX_JWT_CHARS or not _COMPACT_JWS.fullmatch(token):
        raise ForwardedRefused(401, f"the forwarded user token ({header}) is malformed")
    # Checked before decoding for a clear message; decode's algorithms list refuses it as well ("none", RS256 confusion).
    if (_jose_header(token) or {}).get("alg") != ALGORITHM:
        raise ForwardedRefused(401, f"the forwarded user token ({header}) is not signed with {ALGORITHM}")
    try:
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER, leeway=LEEWAY_S,
                                            options={"require": ["exp", "iss"]})  # fmt: skip
    except jwt.MissingRequiredClaimError as exc:
        raise ForwardedRefused(401, f"the forwarded user token ({header}) lacks the required claim {exc.claim!r}") from exc
    except jwt.PyJWTError as exc:
        reason = next((message for kind, message in _REFUSALS if isinstance(exc, kind)), "is not valid")
        raise ForwardedRefused(401, f"the forwarded user token ({header}) {reason}") from exc
    return claims


def acting_user(email: str | None, user_id: str | None, missing: str) -> str:
    """Who the request acts as: the e-mail (already lower-cased), else the gateway's user id; `missing` says what to send."""
    user = email or user_id
    if not user:
        raise ForwardedRefused(401, f"the forwarded user names no user: {missing}")
    return user


def claimed(values: dict[str, tuple[str, ...]], names: HeaderNames) -> dict[str, Any]:
    """Who forwarded headers claim to be, unverified, for the audit log: the user and the gateway's role, never a token."""
    first = {name: all_values[0] for name, all_values in values.items()}
    token = first.get(names.jwt)
    if token is None:
        email, user_id, role = first.get(names.email), first.get(names.user_id), first.get(names.role)
    else:
        unverified = _unverified_claims(token)
        email, user_id, role = (v if isinstance(v, str) else None for v in (unverified.get(k) for k in ("email", "sub", "role")))
    user = (email or "").strip().lower() or (user_id or "").strip() or None
    return {"claimed_user": user[:MAX_NAME_CHARS] if user else None, "claimed_role": (role or "")[:64] or None}


def _claim(claims: dict[str, Any], name: str, header: str) -> str | None:
    value = claims.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ForwardedRefused(401, f"the forwarded user token's {name!r} claim ({header}) is not a string")
    return value.strip() or None


def _word(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_NAME_CHARS or not _PRINTABLE.fullmatch(value):
        raise ForwardedRefused(401, f"the forwarded {what} is not a user id (one word of up to {MAX_NAME_CHARS} characters)")
    return value


def _email(value: str | None, what: str) -> str | None:
    # An @ keeps forwarded names apart from the names of API keys ("admin", the gateway's own user).
    if value is None:
        return None
    if len(value) > MAX_NAME_CHARS or not _PRINTABLE.fullmatch(value) or "@" not in value[1:-1]:
        raise ForwardedRefused(401, f"the forwarded {what} is not an e-mail address")
    return value.lower()


def _role(value: str | None) -> str | None:
    return value[:64] if value else None


def _jose_header(token: str) -> dict[str, Any] | None:
    return _b64_json(token.split(".", 1)[0])


def _unverified_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    return (_b64_json(parts[1]) if len(parts) == 3 and len(token) <= MAX_JWT_CHARS else None) or {}


def _b64_json(part: str) -> dict[str, Any] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None
