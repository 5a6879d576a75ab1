"""`kb keys create|list|revoke`: API keys, against the platform's database whether or not it runs."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from kb.access.cli_db import cli_database
from kb.access.keys import KeyStore
from kb.access.roles import load_roles
from kb.settings import AuthSettings, PlatformSettings, PostgresSettings

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _store() -> tuple[PlatformSettings, PostgresSettings]:
    return PlatformSettings(), PostgresSettings()


@keys_app.command("create")
def create(
    user: Annotated[str, typer.Option(help="Who the key signs in as (sessions and audit rows carry it).")],
    role: Annotated[str, typer.Option(help="A role from roles.yaml: admin, devops, developer, viewer, auditor, …")],
    expires_in_days: Annotated[float | None, typer.Option(help="Days until the key stops working (default: never).")] = None,
    note: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
    gateway: Annotated[
        bool,
        typer.Option(
            "--gateway",
            help="A trusted gateway's key (Open WebUI): the user it forwards in its "
            "headers is the acting user, reading at most what this key's role reads.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; this is the only time it is shown (only its hash is stored)."""
    roles = load_roles(AuthSettings().roles_file).roles
    if role not in roles:
        raise typer.BadParameter(f"unknown role {role!r}; roles: {', '.join(roles)}", param_hint="--role")
    if not user.strip() or len(user) > 200:
        raise typer.BadParameter("give a user name of 1 to 200 characters", param_hint="--user")
    expires = timedelta(days=expires_in_days) if expires_in_days else None
    with cli_database(*_store()) as url:
        store = KeyStore(url)
        try:
            key, record = store.create(user.strip(), role, expires_in=expires, note=note, gateway=gateway)
            _audit(url, "admin.key_create", record.id, {"user": record.user, "role": role, "gateway": gateway})
        finally:
            store.close()
    if as_json:
        typer.echo(json.dumps({"key": key, **record.as_dict()}))
    else:
        kind = "gateway key" if record.gateway else "API key"
        typer.echo(f"{kind} for {record.user} ({role}), id {record.id}; shown only now:\n{key}")


@keys_app.command("list")
def list_keys(user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
              all_keys: Annotated[bool, typer.Option("--all", help="Include revoked and expired keys.")] = False,
              as_json: JsonFlag = False) -> None:  # fmt: skip
    """API keys (ids, users, roles, dates; never the keys)."""
    with cli_database(*_store()) as url:
        store = KeyStore(url)
        try:
            rows = [k.as_dict() for k in store.list(user, include_inactive=all_keys)]
        finally:
            store.close()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else f"expires {row['expires_at']}" if row["expires_at"] else "no expiry"
        gateway = "  gateway" if row["gateway"] else ""
        typer.echo(f"{row['id']}  {row['user']:<24} {row['role']:<10} created {row['created_at'][:19]}  {state}{gateway}")


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `kb keys list`).")], as_json: JsonFlag = False) -> None:
    """Revoke a key at once: requests with it get 401 from then on."""
    with cli_database(*_store()) as url:
        store = KeyStore(url)
        try:
            done = store.revoke(key_id)
            if done:
                _audit(url, "admin.key_revoke", key_id, {})
        finally:
            store.close()
    if as_json:
        typer.echo(json.dumps({"id": key_id, "revoked": done}))
    elif done:
        typer.echo(f"revoked {key_id}")
    if not done:
        raise typer.Exit(1)


def _audit(url: str, action: str, target: str, detail: dict[str, str | bool]) -> None:
    """Admin actions from the CLI are audited like those through the API (actor: the operator's shell)."""
    import getpass

    from kb.access.audit import AuditLog, audit_key

    with AuditLog(url, audit_key(PlatformSettings().data_dir, AuthSettings().audit_key)) as log:
        log.record(f"cli:{getpass.getuser()}", action, target=target, detail=detail)
