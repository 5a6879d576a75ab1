"""The audit log: who did what, when, with what outcome. Rows are only appended, each sealed by an HMAC that
also covers the previous row's, so `verify()` finds a row edited, inserted or deleted in SQL.

What a chain alone cannot show is that its newest rows were cut off: what remains still chains. Two things
cover that. The `kb_audit_head` row, written in the same transaction as every append and sealed by its own
mac, names the newest row: an attacker must edit both tables consistently, and cannot seal a head without the
key. And `verify()` reports `last_seq`/`last_mac`, which an operator notes down and passes back later as
`expect`: that also catches what the head cannot, an old head row saved and put back after rows were deleted.
Purges (retention) cut the chain's start on purpose; the head's anchor records the last purged row, so a purge
is told apart from a deletion.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from assets.mask import mask_secrets

log = logging.getLogger(__name__)

# The `prev` of the very first row.
GENESIS = "0" * 64
# The pg_advisory_xact_lock key that serialises appends and purges: b"kb_audit" read as a big-endian integer.
LOCK_KEY = 0x6B625F6175646974
KEY_FILE = "audit.key"
MIN_KEY_BYTES = 32
# Caps: the log records that something happened and to what, never a whole payload.
MAX_TARGET_CHARS = 500
MAX_STRING_CHARS = 2_000
MAX_KEY_CHARS = 200
MAX_ITEMS = 100
MAX_DEPTH = 6
MAX_DETAIL_CHARS = 16_000
# Masking a megabyte costs real time on a request thread, so only this much of a string is masked (and then
# cut to its cap). Only a secret straddling this boundary, behind more than 60 kB of masked text that shrank to
# almost nothing, could reach the log partly.
_MASK_WINDOW = 64_000
# Keys whose values are secrets whatever they look like: masking text finds `password=…`, not {"password": "…"}.
_SECRET_KEY = re.compile(
    r"(?i)password|passwd|passphrase|\bpass\b|\bpwd\b|secret|token\b|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|authorization|cookie|credential|пароль|密码"
)
_MASKED = "[MASKED:credential]"
_UNSEALED = "unsealed"
_COLUMNS = "seq, at, actor, action, target, outcome, detail, prev, mac"


class AuditError(RuntimeError):
    """The log refused an operation that would hide tampering (a purge over a broken chain)."""


class AuditKeyError(ValueError):
    """No usable audit key; the message never contains the key."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    first_bad_seq: int | None
    problem: str | None
    # The newest row seen (the anchor's when no rows are left): note these down to pass back as `expect`.
    last_seq: int = 0
    last_mac: str = GENESIS


class _Row(NamedTuple):
    seq: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: Any
    prev: str
    mac: str

    def as_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "at": _iso(self.at)}


@dataclass(frozen=True)
class _Head:
    last_seq: int
    last_mac: str
    anchor_seq: int
    anchor_mac: str
    mac: str = ""


_EMPTY_HEAD = _Head(0, GENESIS, 0, GENESIS)


class AuditLog:
    """Appends, verifies, exports and purges `kb_audit`; thread-safe (a small pool), for API request threads."""

    def __init__(
        self,
        database_url: str,
        key: bytes,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pool_size: int = 4,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise AuditKeyError(f"the audit key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._clock = clock
        self._pool: ConnectionPool[Connection[tuple[Any, ...]]] = ConnectionPool(
            database_url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=10,
            name="kb-audit",
            open=True,
        )

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def record(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one row (target and every string in detail masked and capped); return its seq."""
        clean_target = None if target is None else _clean_text(target, MAX_TARGET_CHARS)
        clean_detail = clean_detail_for_log(detail or {})
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            head, sealed = self._head_for_append(conn)
            return self._append(conn, head, sealed, actor, action, clean_target, outcome, clean_detail)

    def verify(self, expect: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute every mac and link from the anchor, then check the head (and `expect`: a seq and mac noted
        down from an earlier verify, which must still be there unless purged)."""
        with self._pool.connection() as conn, conn.transaction():
            # One snapshot for the head and the rows: appends running meanwhile are not half seen.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            head = _read_head(conn)
            start = head or _EMPTY_HEAD
            chain = _Chain(self._key, start.anchor_seq, start.anchor_mac, head.last_seq if head else None, expect)
            chain.feed_all(_stream(conn, f"SELECT {_COLUMNS} FROM kb_audit ORDER BY seq"))
        return chain.result(head, self._key)

    def export(self, since: datetime | None, until: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Rows with since <= at < until, oldest first, as dicts with ISO times (prev and mac included, so an
        export can be checked against the log later)."""
        bounds = (_aware(since), _aware(until))
        with self._pool.connection() as conn, conn.transaction():
            query = (
                f"SELECT {_COLUMNS} FROM kb_audit WHERE (%(since)s::timestamptz IS NULL OR at >= %(since)s)"
                " AND (%(until)s::timestamptz IS NULL OR at < %(until)s) ORDER BY seq"
            )
            for row in _stream(conn, query, {"since": bounds[0], "until": bounds[1]}):
                yield row.as_dict()

    def purge(self, older_than: timedelta = timedelta(days=365)) -> int:
        """Delete the rows older than the retention, from the chain's start only (a newer row stops it), after
        checking them; record the purge as a row of its own. Returns how many rows went."""
        if older_than <= timedelta(0):
            raise ValueError("the retention must be positive")
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            head = _read_head(conn)
            if head is None and _scalar(conn, "SELECT count(*) FROM kb_audit", ()) == 0:
                return 0  # nothing was ever recorded (rows without a head would be tampering)
            if head is None or not _head_sealed(self._key, head):
                raise AuditError("refusing to purge: the audit head is missing or edited (run `kb audit verify`)")
            cutoff = self._now() - older_than
            keep_from = _scalar(conn, "SELECT min(seq) FROM kb_audit WHERE at >= %s", (cutoff,))
            chain = _Chain(self._key, head.anchor_seq, head.anchor_mac, head.last_seq, None)
            bound = head.last_seq + 1 if keep_from is None else keep_from
            chain.feed_all(_stream(conn, f"SELECT {_COLUMNS} FROM kb_audit WHERE seq < %s ORDER BY seq", (bound,)))
            purged, through = chain.rows, (chain.last_seq, chain.last_mac)
            if purged == 0:
                return 0
            if keep_from is not None:  # its link to the last purged row must hold too
                chain.feed_all(_stream(conn, f"SELECT {_COLUMNS} FROM kb_audit WHERE seq = %s", (keep_from,)))
            elif chain.problem is None and through != (head.last_seq, head.last_mac):
                chain.problem = "the newest rows do not match the head"
            if chain.problem is not None:
                raise AuditError(f"refusing to purge over a broken chain: {chain.problem}")
            conn.execute("DELETE FROM kb_audit WHERE seq <= %s", (through[0],))
            head = replace(head, anchor_seq=through[0], anchor_mac=through[1])
            detail = {"rows": purged, "through_seq": through[0], "older_than_s": int(older_than.total_seconds())}
            self._append(conn, head, True, "system", "audit.purge", None, "ok", clean_detail_for_log(detail))
        return purged

    def _head_for_append(self, conn: Connection[tuple[Any, ...]]) -> tuple[_Head, bool]:
        """The head to chain from, and whether to seal the next one: an edited or missing head is never
        resealed (that would launder the edit); appends go on, and verify keeps reporting it."""
        head = _read_head(conn)
        if head is None:
            fresh = _scalar(conn, "SELECT NOT EXISTS (SELECT 1 FROM kb_audit)")
            if not fresh:
                log.warning("the audit head row is missing; appending without sealing a new one")
            return _EMPTY_HEAD, bool(fresh)
        sealed = _head_sealed(self._key, head)
        if not sealed:
            log.warning("the audit head row does not match its mac; appending without resealing it")
        return head, sealed

    def _append(
        self,
        conn: Connection[tuple[Any, ...]],
        head: _Head,
        seal: bool,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        detail: dict[str, Any],
    ) -> int:
        """Insert one row chained to the head's newest row and move the head; the caller holds the lock.

        `prev` comes from the head, not from the newest remaining row: a deleted newest row then stays visible as
        a broken link after later appends instead of being papered over."""
        # PostgreSQL normalises jsonb (numbers above all): the mac covers what it will store and give back.
        stored_detail, seq = _one(conn, "SELECT %s::jsonb, nextval(pg_get_serial_sequence('kb_audit', 'seq'))", (Jsonb(detail),))
        row = _Row(int(seq), self._now(), _plain(actor, 200), _plain(action, 64), target, _plain(outcome, 32),
                   stored_detail, head.last_mac, "")  # fmt: skip
        row = row._replace(mac=_row_mac(self._key, row))
        conn.execute(
            f"INSERT INTO kb_audit ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*row[:6], Jsonb(row.detail), row.prev, row.mac),
        )
        new_head = replace(head, last_seq=row.seq, last_mac=row.mac)
        mac = _head_mac(self._key, new_head) if seal else _UNSEALED
        conn.execute(
            "INSERT INTO kb_audit_head (id, last_seq, last_mac, anchor_seq, anchor_mac, mac) VALUES (1, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq, last_mac = EXCLUDED.last_mac,"
            " anchor_seq = EXCLUDED.anchor_seq, anchor_mac = EXCLUDED.anchor_mac, mac = EXCLUDED.mac",
            (new_head.last_seq, new_head.last_mac, new_head.anchor_seq, new_head.anchor_mac, mac),
        )
        return row.seq

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the audit clock must return timezone-aware datetimes")
        return now.astimezone(UTC)


class _Chain:
    """Walks rows in seq order from the anchor; remembers the first problem and the newest row seen."""

    def __init__(self, key: bytes, anchor_seq: int, anchor_mac: str, head_seq: int | None, expect: tuple[int, str] | None):
        self.key, self.anchor_seq, self.anchor_mac, self.head_seq, self.expect = key, anchor_seq, anchor_mac, head_seq, expect
        self.rows = 0
        self.last_seq, self.last_mac = anchor_seq, anchor_mac
        self.first_bad_seq: int | None = None
        self.problem: str | None = None
        self.saw_expected = False

    def feed_all(self, rows: Iterable[_Row]) -> None:
        for row in rows:
            self.rows += 1
            if self.problem is None:
                self.problem = self._check(row)
                self.first_bad_seq = row.seq if self.problem else None
            self.last_seq, self.last_mac = row.seq, row.mac

    def _check(self, row: _Row) -> str | None:
        if row.seq <= self.anchor_seq:
            return f"row {row.seq} lies at or before the purge anchor (row {self.anchor_seq}): it was inserted later"
        if self.head_seq is not None and row.seq > self.head_seq:
            return f"row {row.seq} lies after the head (row {self.head_seq}): it was not written by the audit log"
        if not hmac.compare_digest(_row_mac(self.key, row), row.mac):
            return f"row {row.seq}: its mac does not match its contents (edited, or written without the key)"
        if row.prev != self.last_mac:
            if self.last_seq == self.anchor_seq:
                start = "the purge anchor" if self.anchor_seq else "the genesis value"
                return f"row {row.seq}: its prev does not match {start}: rows before it were deleted"
            return f"row {row.seq}: its prev does not match the mac of row {self.last_seq}: a row between them was deleted"
        if self.expect is not None and row.seq == self.expect[0]:
            self.saw_expected = True
            if not hmac.compare_digest(row.mac, self.expect[1]):
                return f"row {row.seq} does not have the mac noted down earlier: the log was rewritten"
        return None

    def result(self, head: _Head | None, key: bytes) -> VerifyResult:
        bad_seq, problem = (self.first_bad_seq, self.problem) if self.problem else self._head_problem(head, key)
        if problem is None:
            bad_seq, problem = self._expect_problem()
        return VerifyResult(problem is None, self.rows, bad_seq, problem, self.last_seq, self.last_mac)

    def _head_problem(self, head: _Head | None, key: bytes) -> tuple[int | None, str | None]:
        if head is None:
            return (None, "the head row is missing") if self.rows else (None, None)
        if not _head_sealed(key, head):
            return None, "the head row does not match its mac (edited, or written after an edit was found)"
        if self.last_seq < head.last_seq:
            return self.last_seq + 1, (
                f"the log ends at row {self.last_seq} but its head records row {head.last_seq}: the newest rows were deleted"
            )
        if self.last_mac != head.last_mac:
            return self.last_seq, f"row {self.last_seq}: the head records another mac for it"
        return None, None

    def _expect_problem(self) -> tuple[int | None, str | None]:
        if self.expect is None:
            return None, None
        seq, mac = self.expect
        if seq > self.last_seq:
            return (
                self.last_seq + 1,
                f"the log ends at row {self.last_seq}, before row {seq} noted down earlier: rows were deleted",
            )
        if seq == self.anchor_seq and not hmac.compare_digest(mac, self.anchor_mac):
            return seq, f"the purge anchor (row {seq}) does not have the mac noted down earlier: the log was rewritten"
        if seq > self.anchor_seq and not self.saw_expected:
            return seq, f"row {seq}, noted down earlier, is missing"
        return None, None


def audit_key(data_dir: Path, configured: str | None, *, create: bool = True) -> bytes:
    """The configured key (base64 or hex, at least 32 bytes) if given, else `data_dir/audit.key`, created on first
    use (mode 0600) unless `create` is false (readers: a new key would only make every row look forged)."""
    if configured:
        return parse_key(configured)
    path = data_dir / KEY_FILE
    if not path.exists():
        if not create:
            raise AuditKeyError(f"no audit key: set KB_AUTH_AUDIT_KEY, or let the platform create {path} first")
        _create_key_file(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuditKeyError(f"{path} is readable by others (mode {mode:o}): chmod 600 it")
    return parse_key(path.read_text(encoding="ascii"))


def parse_key(text: str) -> bytes:
    """A key written as hex or base64 (standard or URL-safe, padding optional)."""
    value = text.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", value):
        key = bytes.fromhex(value)
    else:
        try:
            altchars = b"-_" if re.search(r"[-_]", value) else None
            key = base64.b64decode(value + "=" * (-len(value) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raise AuditKeyError("the audit key is neither hex nor base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(f"the audit key has {len(key)} bytes; it needs at least {MIN_KEY_BYTES}")
    return key


def _create_key_file(path: Path) -> None:
    """Write a new key beside `path`, then link it into place: atomic, and never replaces the key that another
    process created first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secrets.token_bytes(32).hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
    finally:
        staging.unlink(missing_ok=True)


def clean_detail_for_log(detail: Mapping[str, Any]) -> dict[str, Any]:
    """`detail` as the log stores it: JSON values only, every string masked and capped, containers bounded,
    values under secret-named keys masked whole, and the whole bounded in size."""
    cleaned = _clean_value(dict(detail), 0, False)
    text = json.dumps(cleaned, ensure_ascii=False)
    if len(text) > MAX_DETAIL_CHARS:
        return {"truncated": True, "chars": len(text), "preview": text[:MAX_STRING_CHARS]}
    return dict(cleaned)


def _clean_value(value: Any, depth: int, secret: bool) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if secret and isinstance(value, str | int | float | bytes):
        return _MASKED
    if isinstance(value, int):
        return value if abs(value) < 2**63 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _clean_text(value, MAX_STRING_CHARS)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # never the bytes: they may be a key
    if isinstance(value, datetime | date):
        return value.isoformat()
    if depth >= MAX_DEPTH and isinstance(value, Mapping | list | tuple | set | frozenset):
        return "<nested too deep>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["<more items>"] = len(value) - MAX_ITEMS
                break
            name = _clean_text(str(key), MAX_KEY_CHARS)
            out[name] = _clean_value(item, depth + 1, secret or bool(_SECRET_KEY.search(name)))
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [_clean_value(item, depth + 1, secret) for item in list(value)[:MAX_ITEMS]]
        return items + ([f"<{len(value) - MAX_ITEMS} more items>"] if len(value) > MAX_ITEMS else [])
    return _clean_text(str(value), MAX_STRING_CHARS)


def _clean_text(value: str, limit: int) -> str:
    """Masked first, then cut (a cut first could split a secret past recognition)."""
    text = mask_secrets(_plain(value, _MASK_WINDOW)).text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(value: str, limit: int) -> str:
    """Cut to `limit`, without NUL bytes or lone surrogates (PostgreSQL refuses both)."""
    return value[:limit].replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _aware(at: datetime | None) -> datetime | None:
    if at is not None and at.tzinfo is None:
        raise ValueError("give timezone-aware datetimes")
    return at


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _row_mac(key: bytes, row: _Row) -> str:
    fields = {**row._asdict(), "at": _iso(row.at)}
    del fields["mac"]
    return hmac.new(key, _canonical(fields), hashlib.sha256).hexdigest()


def _head_mac(key: bytes, head: _Head) -> str:
    fields = {"head": 1, "last_seq": head.last_seq, "last_mac": head.last_mac,
              "anchor_seq": head.anchor_seq, "anchor_mac": head.anchor_mac}  # fmt: skip
    return hmac.new(key, _canonical(fields), hashlib.sha256).hexdigest()


def _head_sealed(key: bytes, head: _Head) -> bool:
    return hmac.compare_digest(_head_mac(key, head), head.mac)


def _read_head(conn: Connection[tuple[Any, ...]]) -> _Head | None:
    values = conn.execute("SELECT last_seq, last_mac, anchor_seq, anchor_mac, mac FROM kb_audit_head WHERE id = 1").fetchone()
    return None if values is None else _Head(*values)


def _stream(conn: Connection[tuple[Any, ...]], query: str, params: Any = None) -> Iterator[_Row]:
    """Rows through a server-side cursor: a year of audit rows never sits in memory at once."""
    with conn.cursor(name=f"kb_audit_{secrets.token_hex(4)}") as cursor:
        cursor.itersize = 2_000
        cursor.execute(query, params)
        for values in cursor:
            yield _Row(*values)


def _one(conn: Connection[tuple[Any, ...]], query: str, params: Any = None) -> tuple[Any, ...]:
    values = conn.execute(query, params).fetchone()
    assert values is not None
    return values


def _scalar(conn: Connection[tuple[Any, ...]], query: str, params: Any = None) -> Any:
    return _one(conn, query, params)[0]
