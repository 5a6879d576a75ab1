"""/v1/auth: sign in with a directory password (LDAP) for a session token, who am I, sign out;
/v1/admin/keys: API keys for the admin role; /v1/me/data and /v1/admin/users/{user}/data: the right to erasure.

Erasure removes a user's conversations (archived ones too) and tool-call records at once, without the grace a
single session's delete gets, and ends their sign-in sessions. The audit log keeps its rows about the user for
their retention (a legal hold) and records the erasure itself. A user's own erasure leaves API keys alone: an
admin issued them (often to a script), and an admin revokes them, as an admin's erasure of a user does."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import AdminDep, Caller, CallerDep, client_of, failed_sign_in, throttle_failed_sign_ins
from api.deps import StateDep
from api.schemas import ErasureReport
from api.state import AppState
from kb.access.identity import AuthError
from kb.access.keys import Kind

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
    gateway: bool = Field(default=False, description="A trusted gateway's key (Open WebUI): the user it forwards in its "
                          "headers is the acting user, reading at most what this key's role reads.")  # fmt: skip


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
    """Who the credential signs in as (`via`: the gateway key's user that forwarded them), and what the roles let them read."""
    a = caller.access
    return {"user": caller.user(), "method": caller.identity.method, "roles": list(a.roles), "collections": sorted(a.collections),
            "connectors": sorted(a.connectors), "requests_per_minute": a.requests_per_minute, "admin": a.admin,
            "read_others_sessions": a.read_others_sessions, "all_documents": a.groups is None, "via": caller.via}  # fmt: skip


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
    key, record = await run_in_threadpool(
        lambda: state.keys.create(body.user, body.role, expires_in=expires, note=body.note, gateway=body.gateway)
    )
    await run_in_threadpool(state.audit.record, caller.user(), "admin.key_create", target=record.id,
                            detail={"user": body.user, "role": body.role, "gateway": body.gateway})  # fmt: skip
    return {"key": key, **record.as_dict()}


@router.delete("/v1/admin/keys/{key_id}", status_code=204)
async def revoke_key(key_id: Annotated[str, Field(max_length=16)], caller: AdminDep, state: StateDep) -> None:
    """Revoke an API key by id."""
    if not await run_in_threadpool(state.keys.revoke, key_id):
        raise HTTPException(404, f"no active key {key_id!r}")
    await run_in_threadpool(state.audit.record, caller.user(), "admin.key_revoke", target=key_id)


@router.delete("/v1/me/data", tags=["privacy"])
async def erase_my_data(caller: CallerDep, state: StateDep) -> ErasureReport:
    """Erase all your conversations (archived ones included) and tool-call records now, and end your sign-in sessions."""
    if caller.identity.method == "local":
        raise HTTPException(400, "sign-in is off (KB_AUTH_MODE=off), so there is no signed-in user to erase; "
                            "use DELETE /v1/admin/users/{user}/data")  # fmt: skip
    return await _erase(state, caller, caller.user(), "user_data_erase", revoke_api_keys=False)


@router.delete("/v1/admin/users/{user}/data", tags=["privacy"])
async def erase_user_data(user: Annotated[str, Path(min_length=1, max_length=200)], caller: AdminDep,
                          state: StateDep) -> ErasureReport:  # fmt: skip
    """Erase a user's conversations and tool-call records, and revoke their sign-in sessions and API keys."""
    return await _erase(state, caller, user, "admin.user_data_erase", revoke_api_keys=True)


async def _erase(state: AppState, caller: Caller, user: str, action: str, *, revoke_api_keys: bool) -> ErasureReport:
    # Credentials first: nothing new is written with them while the data goes.
    kinds: tuple[Kind, ...] = ("session", "api_key") if revoke_api_keys else ("session",)
    revoked = await run_in_threadpool(state.keys.revoke_user, user, kinds)
    erased = await run_in_threadpool(state.sessions.erase_user, user)
    counts = {**erased, "session_tokens_revoked": revoked["session"], "api_keys_revoked": revoked.get("api_key", 0)}
    seq = await run_in_threadpool(lambda: state.audit.record(caller.user(), action, target=user, detail=counts))
    return ErasureReport(user=user, audit_seq=seq, **counts)
