"""/v1/auth: sign in with a directory password (LDAP) for a session token, who am I, sign out;
/v1/admin/keys: API keys for the admin role."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import AdminDep, CallerDep, client_of, failed_sign_in, throttle_failed_sign_ins
from api.deps import StateDep
from kb.access.identity import AuthError

router = APIRouter(tags=["auth"])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=200)
    role: str = Field(min_length=1, max_length=64)
    expires_in_days: Annotated[float | None, Field(gt=0, le=3650)] = None
    note: str | None = Field(default=None, max_length=200)


@router.post("/v1/auth/login")
async def login(body: SignIn, request: Request, state: StateDep) -> dict[str, Any]:
    """Check a directory user name and password (LDAP) and return a session token to send as a bearer."""
    if state.ldap is None:
        raise HTTPException(404, "password sign-in is not configured (KB_AUTH_LDAP_URL); use an API key or an OIDC token")
    client = client_of(request)
    await run_in_threadpool(throttle_failed_sign_ins, state, client, f"user:{body.username.lower()}")
    try:
        identity = await run_in_threadpool(state.ldap.authenticate, body.username, body.password)
    except AuthError as exc:
        await run_in_threadpool(failed_sign_in, state, client, body.username.lower(), str(exc))
        raise HTTPException(401, str(exc)) from exc
    access = state.access_of(identity)
    token, record = await run_in_threadpool(
        lambda: state.keys.create(
            identity.user, "", kind="session", groups=identity.groups, expires_in=timedelta(hours=state.auth.session_hours)
        )  # fmt: skip
    )
    await run_in_threadpool(state.audit.record, identity.user, "sign_in", target=client,
                            detail={"method": "ldap", "roles": list(access.roles), "session": record.id})  # fmt: skip
    return {"token": token, "token_type": "bearer", "expires_at": record.expires_at, "user": identity.user,
            "roles": list(access.roles)}  # fmt: skip


@router.post("/v1/auth/logout", status_code=204)
async def logout(caller: CallerDep, state: StateDep) -> None:
    """End the sign-in session whose token this request carries (API keys are revoked by an admin)."""
    if caller.identity.method == "session" and caller.key_id:
        await run_in_threadpool(state.keys.revoke, caller.key_id)
        await run_in_threadpool(state.audit.record, caller.user(), "sign_out", target=caller.key_id)


@router.get("/v1/auth/me")
async def me(caller: CallerDep) -> dict[str, Any]:
    """Who the credential signs in as, and what the roles let them read."""
    a = caller.access
    return {"user": caller.user(), "method": caller.identity.method, "roles": list(a.roles), "collections": sorted(a.collections),
            "connectors": sorted(a.connectors), "requests_per_minute": a.requests_per_minute, "admin": a.admin,
            "read_others_sessions": a.read_others_sessions, "all_documents": a.groups is None}  # fmt: skip


@router.get("/v1/admin/keys")
async def list_keys(_: AdminDep, state: StateDep, user: Annotated[str | None, Field(max_length=200)] = None) -> dict[str, Any]:
    """Active API keys (never the keys themselves)."""
    return {"data": [k.as_dict() for k in await run_in_threadpool(state.keys.list, user)]}


@router.post("/v1/admin/keys", status_code=201)
async def create_key(body: NewKey, caller: AdminDep, state: StateDep) -> dict[str, Any]:
    """A new API key: shown in this response only."""
    if body.role not in state.role_config.roles:
        raise HTTPException(400, f"unknown role {body.role!r}; roles: {', '.join(state.role_config.roles)}")
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    key, record = await run_in_threadpool(lambda: state.keys.create(body.user, body.role, expires_in=expires, note=body.note))
    await run_in_threadpool(state.audit.record, caller.user(), "admin.key_create", target=record.id,
                            detail={"user": body.user, "role": body.role})  # fmt: skip
    return {"key": key, **record.as_dict()}


@router.delete("/v1/admin/keys/{key_id}", status_code=204)
async def revoke_key(key_id: Annotated[str, Field(max_length=16)], caller: AdminDep, state: StateDep) -> None:
    """Revoke an API key by id."""
    if not await run_in_threadpool(state.keys.revoke, key_id):
        raise HTTPException(404, f"no active key {key_id!r}")
    await run_in_threadpool(state.audit.record, caller.user(), "admin.key_revoke", target=key_id)
