"""Who is calling: the bearer credential of every request (an API key, a sign-in session token, or an
OIDC JWT), the roles it maps to, the per-user rate limit, and failed sign-ins throttled per client.

A gateway key (Open WebUI's) may forward the user it calls for (kb.access.forwarded): that user is the caller,
reading at most what the gateway key reads, rate-limited as themselves. Forwarded user headers on any other
credential are ignored (the request acts as the credential's own user) and recorded in the audit log.

Anonymous callers reach only /healthz, /readyz, the chat page (which then signs in) and webhooks
(HMAC-signed by their source). With KB_AUTH_MODE=off (refused outside KB_API_ENVIRONMENT=local) every
caller is the local operator with the admin role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep
from api.state import AppState
from kb.access.forwarded import ForwardedRefused, HeaderNames, claimed, forwarded_user, forwarded_values
from kb.access.identity import AuthError, Identity
from kb.access.keys import KeyRecord, looks_like_key
from kb.access.roles import Access
from kb.observability import bind_user

LOCAL = Identity("local", "local", roles=("admin",))
BEARER = {"WWW-Authenticate": 'Bearer realm="kb"'}


@dataclass(frozen=True)
class Caller:
    identity: Identity
    access: Access
    key_id: str | None = None
    # The gateway key's user when a gateway forwarded this caller (identity.method "forwarded"); key_id is that key's.
    via: str | None = None

    def forwarded_by(self) -> dict[str, str]:
        """`{"via": gateway user}` for an audit row's detail when a gateway forwarded this caller; else nothing."""
        return {"via": self.via} if self.via else {}

    def user(self, claimed: str | None = None) -> str:
        """The user the request acts as: the signed-in one; with auth off, the request's `user` field."""
        if self.identity.method == "local":
            return claimed or "anonymous"
        return self.identity.user


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def current_caller(request: Request, state: StateDep) -> Caller:
    """The authenticated caller, rate-limited; 401 without a valid credential, 429 over the limit."""
    cached = getattr(request.state, "caller", None)
    if isinstance(cached, Caller):
        return cached
    if state.auth.mode == "off":
        caller = Caller(LOCAL, state.access_of(LOCAL))
    else:
        caller = await run_in_threadpool(_authenticate, state, request)
        decision = await run_in_threadpool(state.limiter.hit, f"user:{caller.identity.user}", caller.access.requests_per_minute)
        if not decision.allowed:
            message = f"rate limit of {decision.limit} requests a minute reached; retry in {decision.retry_after_s} s"
            raise HTTPException(429, message, headers={"Retry-After": str(decision.retry_after_s)})
    request.state.caller = caller
    bind_user(caller.identity.user)  # on this request's log lines and, when tracing, its span (enduser.id)
    return caller


def _authenticate(state: AppState, request: Request) -> Caller:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "sign in: send 'Authorization: Bearer <API key or token>'", headers=BEARER)
    try:
        identity, record = _identity(state, token)
    except AuthError as exc:
        # Keys carry 256 random bits, so a bad one is noise rather than a guess: it is counted and recorded,
        # and past the limit the client gets 429s for bad credentials only. Good ones keep working from the
        # same address (a proxy, an office behind one NAT).
        client = client_of(request)
        failed_sign_in(state, client, None, str(exc), scope="bearer")
        throttle_failed_sign_ins(state, client, scope="bearer")
        raise HTTPException(401, str(exc), headers=BEARER) from exc
    caller = Caller(identity, state.access_of(identity), record.id if record else None)
    return _forwarded_caller(state, request, caller, record)


def _identity(state: AppState, token: str) -> tuple[Identity, KeyRecord | None]:
    if looks_like_key(token):
        record = state.keys.verify(token)
        if record is None:
            raise AuthError("invalid, expired or revoked API key")
        return record.identity(), record
    if state.oidc is not None and state.oidc.looks_like_jwt(token):
        return state.oidc.verify(token), None
    raise AuthError("unrecognised credential: expected an API key (kb_…)" + (" or an OIDC token" if state.oidc else ""))


def _forwarded_caller(state: AppState, request: Request, caller: Caller, record: KeyRecord | None) -> Caller:
    """The forwarded user as the caller when a gateway key forwards one; else `caller`, the forwarded headers of a
    credential that is no gateway's ignored and recorded. 401/403 (recorded) for a forwarded user that is refused."""
    names = forwarded_header_names(state)
    values = forwarded_values(request.headers.items(), names)
    if not values:
        return caller
    if record is None or not record.gateway:
        reason = f"{_credential(caller, record)} that is not a gateway key"
        _audit_forwarded(state, caller, "forwarded_user_ignored", reason, values, names)
        return caller
    secret = state.auth.forwarded_jwt_secret
    try:
        forwarded = forwarded_user(values, names, secret.get_secret_value() if secret else None)
    except ForwardedRefused as exc:
        _audit_forwarded(state, caller, "forwarded_user_refused", str(exc), values, names, client=client_of(request))
        raise HTTPException(exc.status, str(exc), headers=BEARER if exc.status == 401 else None) from exc
    assert forwarded is not None  # values were present
    identity = forwarded.identity()
    return Caller(identity, state.access_of(identity).capped_by(caller.access), record.id, via=record.user)


def _credential(caller: Caller, record: KeyRecord | None) -> str:
    if record is None:
        return f"an {caller.identity.method.upper()} token"
    return "a sign-in session" if record.kind == "session" else "an API key"


def _audit_forwarded(state: AppState, caller: Caller, action: str, reason: str, values: dict[str, tuple[str, ...]],
                     names: HeaderNames, **extra: str) -> None:  # fmt: skip
    """Who the forwarded headers claimed to be (unverified, never a token) and which came, by the credential's own user."""
    detail = {"reason": reason, "headers": sorted(values), **claimed(values, names), **extra}
    state.audit.record(caller.identity.user, action, target=caller.key_id, outcome="denied", detail=detail)


def forwarded_header_names(state: AppState) -> HeaderNames:
    return HeaderNames.of(*state.auth.forwarded_header_names())


def throttle_failed_sign_ins(state: AppState, *keys: str, scope: str = "password") -> None:
    """429 while a client (or user name) is over its failed sign-ins a minute."""
    limit = state.auth.failed_bearer_per_minute if scope == "bearer" else state.auth.failed_sign_ins_per_minute
    for key in keys:
        decision = state.limiter.peek(f"{scope}-failed:{key}", limit)
        if not decision.allowed:
            raise HTTPException(429, f"too many failed sign-ins; retry in {decision.retry_after_s} s",
                                headers={"Retry-After": str(decision.retry_after_s)})  # fmt: skip


def failed_sign_in(state: AppState, client: str, user: str | None, reason: str, scope: str = "password") -> None:
    """Count a failed sign-in against the client (and the user name tried) and record it in the audit log."""
    for key in (client, *([f"user:{user}"] if user else [])):
        state.limiter.count(f"{scope}-failed:{key}")
    state.audit.record(user or "unknown", "sign_in_failed", target=client, outcome="denied", detail={"reason": reason})


CallerDep = Annotated[Caller, Depends(current_caller)]


def readable_collections(caller: Caller, requested: list[str] | None) -> list[str]:
    """The collections a request searches: those asked for, or all the caller may read; 403 otherwise."""
    try:
        return caller.access.readable(requested)
    except PermissionError as exc:
        raise HTTPException(403, str(exc)) from exc


def require_admin(caller: CallerDep) -> Caller:
    if not caller.access.admin:
        raise HTTPException(403, "this needs the admin role")
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]
