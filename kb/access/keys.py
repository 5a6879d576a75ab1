"""API keys and sign-in session tokens, stored hashed in PostgreSQL (table kb_api_keys, migration 0003; `gateway`, 0008).

A key is `kb_<id>_<secret>`: the id names it in listings and audit rows; the secret (256 random bits)
is shown once, at creation, and only its SHA-256 is kept. With that much entropy a fast hash is enough
(a slow one guards guessable passwords), and lookups stay one indexed query per request."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from kb.access.identity import Identity

PREFIX = "kb_"
_KEY = re.compile(r"^kb_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
Kind = Literal["api_key", "session"]
# last_used_at is written at most this often per key, so a busy key does not write on every request.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    user: str
    role: str
    kind: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    note: str | None
    groups: tuple[str, ...] = ()
    # A trusted gateway's key (Open WebUI): the user it forwards in its headers is the acting user (kb.access.forwarded).
    gateway: bool = False

    def as_dict(self) -> dict[str, Any]:
        iso = {k: getattr(self, k).isoformat() if getattr(self, k) else None
               for k in ("created_at", "expires_at", "revoked_at", "last_used_at")}  # fmt: skip
        return {"id": self.id, "user": self.user, "role": self.role, "kind": self.kind, "gateway": self.gateway,
                "note": self.note, **iso}  # fmt: skip

    def identity(self) -> Identity:
        if self.kind == "session":
            return Identity(self.user, "session", groups=self.groups)
        return Identity(self.user, "api_key", roles=(self.role,))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return bool(_KEY.match(token))


class KeyStore:
    """Create, verify, list and revoke keys."""

    def __init__(self, database_url: str, engine: Engine | None = None) -> None:
        from query_engine.memory import sqlalchemy_url

        self.engine = engine or create_engine(sqlalchemy_url(database_url), pool_pre_ping=True)

    def create(self, user: str, role: str, *, expires_in: timedelta | None = None, kind: Kind = "api_key",
               groups: Sequence[str] = (), note: str | None = None, gateway: bool = False) -> tuple[str, KeyRecord]:  # fmt: skip
        """A new key and its record; the key itself is never stored or shown again. A `gateway` key's forwarded user
        headers set the acting user (only API keys can be gateways)."""
        if gateway and kind != "api_key":
            raise ValueError("only an API key can be a gateway key")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = f"{PREFIX}{key_id}_{secret}"
        expires = datetime.now(UTC) + expires_in if expires_in else None
        with self.engine.begin() as conn:
            conn.execute(
                text("""INSERT INTO kb_api_keys (id, hash, "user", role, kind, expires_at, note, groups, gateway)
                        VALUES (:id, :hash, :user, :role, :kind, :expires, :note, CAST(:groups AS jsonb), :gateway)"""),
                {"id": key_id, "hash": hash_key(key), "user": user, "role": role, "kind": kind, "expires": expires,
                 "note": note, "groups": _json_list(groups), "gateway": gateway},
            )  # fmt: skip
        record = self.get(key_id)
        assert record is not None
        return key, record

    def verify(self, key: str) -> KeyRecord | None:
        """The key's record when it exists, is not revoked and has not expired; else None."""
        if not looks_like_key(key):
            return None
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = conn.execute(text(f"SELECT {_COLUMNS} FROM kb_api_keys WHERE hash = :hash"), {"hash": hash_key(key)}).first()
            if row is None:
                return None
            record = _record(row)
            if record.revoked_at is not None or (record.expires_at is not None and record.expires_at <= now):
                return None
            if record.last_used_at is None or now - record.last_used_at > _TOUCH_EVERY:
                conn.execute(text("UPDATE kb_api_keys SET last_used_at = :now WHERE id = :id"), {"now": now, "id": record.id})
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT {_COLUMNS} FROM kb_api_keys WHERE id = :id"), {"id": key_id}).first()
        return _record(row) if row else None

    def list(self, user: str | None = None, include_inactive: bool = False) -> list[KeyRecord]:
        """API keys (not sign-in sessions), newest first."""
        where = ["kind = 'api_key'"] + (
            [] if include_inactive else ["revoked_at IS NULL", "(expires_at IS NULL OR expires_at > now())"]
        )
        if user is not None:
            where.append('"user" = :user')
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {_COLUMNS} FROM kb_api_keys WHERE {' AND '.join(where)} ORDER BY created_at DESC"),
                                {"user": user}).all()  # fmt: skip
        return [_record(r) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key (or end a sign-in session) by id; False when no active key has that id."""
        with self.engine.begin() as conn:
            done = conn.execute(
                text("UPDATE kb_api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"), {"id": key_id}
            )
        return bool(done.rowcount)

    def revoke_user(self, user: str, kinds: Sequence[Kind] = ("api_key", "session")) -> dict[str, int]:
        """Revoke every active key and sign-in session of `user` among `kinds` (erasure, offboarding); how many of
        each kind. The rows stay, revoked: audit rows name key ids."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                text("""UPDATE kb_api_keys SET revoked_at = now() WHERE "user" = :user AND kind = ANY(:kinds)
                        AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) RETURNING kind"""),
                {"user": user, "kinds": list(kinds)},
            ).all()
        revoked: dict[str, int] = dict.fromkeys(kinds, 0)
        for (kind,) in rows:
            revoked[kind] += 1
        return revoked

    def has_admin(self, admin_roles: Sequence[str]) -> bool:
        """Whether an active API key with one of these roles exists (first run creates one otherwise)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("""SELECT 1 FROM kb_api_keys WHERE kind = 'api_key' AND role = ANY(:roles) AND revoked_at IS NULL
                        AND (expires_at IS NULL OR expires_at > now()) LIMIT 1"""),
                {"roles": list(admin_roles)},
            ).first()
        return row is not None

    def close(self) -> None:
        self.engine.dispose()


_COLUMNS = 'id, "user", role, kind, created_at, expires_at, revoked_at, last_used_at, note, groups, gateway'


def _record(row: Any) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], tuple(row[9] or ()), bool(row[10]))


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def first_admin_key(store: KeyStore, admin_roles: Sequence[str] = ("admin",)) -> str | None:
    """On a platform with no active admin key, create one (user 'admin') and return it to be shown once."""
    if store.has_admin(admin_roles):
        return None
    key, _ = store.create("admin", admin_roles[0], note="created by the first `kb up`")
    return key
