"""The HMAC-chained audit log against the real PostgreSQL: tampering in SQL is found, purges are not."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from kb.access.audit import (
    GENESIS,
    MAX_DETAIL_CHARS,
    MAX_TARGET_CHARS,
    AuditError,
    AuditKeyError,
    AuditLog,
    audit_key,
    parse_key,
)
from kb.audit_cli import audit_app
from query_engine.memory import migrate

KEY = bytes(range(32))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A settable clock that moves one second per reading (threads read it under the log's lock, but be safe)."""

    def __init__(self, now: datetime) -> None:
        self.now, self._lock = now, threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            now, self.now = self.now, self.now + timedelta(seconds=1)
            return now


@pytest.fixture(scope="module")
def db(postgres_url: str) -> str:
    migrate(postgres_url)
    return postgres_url


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def audit(db: str, clock: Clock) -> Iterator[AuditLog]:
    sql(db, "TRUNCATE kb_audit, kb_audit_head RESTART IDENTITY")
    with AuditLog(db, KEY, clock=clock) as log:
        yield log


def sql(db: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def record_n(audit: AuditLog, n: int, action: str = "query") -> list[int]:
    return [audit.record("alice", action, target=f"doc-{i}", detail={"i": i}) for i in range(n)]


def test_recorded_rows_chain_to_each_other_and_verify(audit: AuditLog, db: str) -> None:
    assert record_n(audit, 3) == [1, 2, 3]
    rows = sql(db, "SELECT seq, prev, mac FROM kb_audit ORDER BY seq")
    assert rows[0][1] == GENESIS and rows[1][1] == rows[0][2] and rows[2][1] == rows[1][2]
    result = audit.verify()
    assert result.ok and result.rows == 3 and result.problem is None
    assert (result.last_seq, result.last_mac) == (3, rows[2][2])


def test_a_row_edited_in_sql_fails_verify_at_that_row(audit: AuditLog, db: str) -> None:
    record_n(audit, 3)
    sql(db, """UPDATE kb_audit SET detail = '{"i": 99}' WHERE seq = 2""")
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 2 and "mac" in (result.problem or "")


def test_a_row_deleted_in_the_middle_fails_verify(audit: AuditLog, db: str) -> None:
    record_n(audit, 4)
    sql(db, "DELETE FROM kb_audit WHERE seq = 2")
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 3 and "deleted" in (result.problem or "")


def test_a_row_forged_without_the_key_fails_verify_even_with_a_matching_head(audit: AuditLog, db: str) -> None:
    record_n(audit, 2)
    (last_mac,) = sql(db, "SELECT mac FROM kb_audit WHERE seq = 2")[0]
    forged_mac = hmac.new(b"not the key" * 4, b"anything", hashlib.sha256).hexdigest()
    sql(
        db,
        "INSERT INTO kb_audit (seq, at, actor, action, target, outcome, detail, prev, mac)"
        " VALUES (3, now(), 'mallory', 'admin.key_create', NULL, 'ok', '{}', %s, %s)",
        (last_mac, forged_mac),
    )
    sql(db, "UPDATE kb_audit_head SET last_seq = 3, last_mac = %s", (forged_mac,))
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 3 and "mac" in (result.problem or "")


def test_deleting_the_newest_row_is_caught_by_the_head_and_stays_caught(audit: AuditLog, db: str) -> None:
    record_n(audit, 3)
    sql(db, "DELETE FROM kb_audit WHERE seq = 3")
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 3 and "head" in (result.problem or "")
    audit.record("bob", "query")  # a later append must not paper over the gap
    later = audit.verify()
    assert not later.ok and later.first_bad_seq == 4 and "deleted" in (later.problem or "")


def test_rows_deleted_at_the_start_fail_verify(audit: AuditLog, db: str) -> None:
    record_n(audit, 3)
    sql(db, "DELETE FROM kb_audit WHERE seq = 1")
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 2 and "genesis" in (result.problem or "")


def test_an_old_head_put_back_is_caught_by_the_noted_seq_and_mac(audit: AuditLog, db: str) -> None:
    record_n(audit, 2)
    saved_head = sql(db, "SELECT last_seq, last_mac, anchor_seq, anchor_mac, mac FROM kb_audit_head")[0]
    record_n(audit, 2)
    noted = audit.verify()
    assert noted.ok and noted.last_seq == 4
    sql(db, "DELETE FROM kb_audit WHERE seq > 2")
    sql(db, "UPDATE kb_audit_head SET last_seq = %s, last_mac = %s, anchor_seq = %s, anchor_mac = %s, mac = %s", saved_head)
    assert audit.verify().ok  # the documented limit of the head: a replayed, genuinely sealed old head
    result = audit.verify(expect=(noted.last_seq, noted.last_mac))
    assert not result.ok and result.first_bad_seq == 3 and "noted down" in (result.problem or "")


def test_purge_removes_old_rows_from_the_start_and_verify_still_passes(audit: AuditLog, clock: Clock, db: str) -> None:
    record_n(audit, 3)  # 2026-01-01
    clock.now = T0 + timedelta(days=500)
    record_n(audit, 2)
    assert audit.purge(older_than=timedelta(days=365)) == 3
    assert [seq for (seq,) in sql(db, "SELECT seq FROM kb_audit ORDER BY seq")] == [4, 5, 6]
    (action, detail) = sql(db, "SELECT action, detail FROM kb_audit WHERE seq = 6")[0]
    assert action == "audit.purge" and detail["rows"] == 3 and detail["through_seq"] == 3
    result = audit.verify()
    assert result.ok and result.rows == 3
    assert audit.purge(older_than=timedelta(days=365)) == 0


def test_after_a_purge_deleting_the_first_remaining_row_still_fails_verify(audit: AuditLog, clock: Clock, db: str) -> None:
    record_n(audit, 2)
    clock.now = T0 + timedelta(days=400)
    record_n(audit, 3)
    assert audit.purge(timedelta(days=365)) == 2
    sql(db, "DELETE FROM kb_audit WHERE seq = 3")
    result = audit.verify()
    assert not result.ok and result.first_bad_seq == 4 and "purge anchor" in (result.problem or "")


def test_purge_stops_at_the_first_recent_row(audit: AuditLog, clock: Clock, db: str) -> None:
    record_n(audit, 1)
    clock.now = T0 + timedelta(days=400)
    record_n(audit, 1)
    clock.now = T0 + timedelta(days=1)  # a clock that stepped back: an old row after a recent one stays
    record_n(audit, 1)
    clock.now = T0 + timedelta(days=401)
    assert audit.purge(timedelta(days=365)) == 1
    assert [seq for (seq,) in sql(db, "SELECT seq FROM kb_audit ORDER BY seq")] == [2, 3, 4]
    assert audit.verify().ok


def test_purge_refuses_to_erase_a_broken_chain(audit: AuditLog, clock: Clock, db: str) -> None:
    record_n(audit, 3)
    clock.now = T0 + timedelta(days=400)
    record_n(audit, 1)
    sql(db, "UPDATE kb_audit SET actor = 'someone else' WHERE seq = 2")
    with pytest.raises(AuditError, match="row 2"):
        audit.purge(timedelta(days=365))
    assert sql(db, "SELECT count(*) FROM kb_audit")[0][0] == 4


def test_concurrent_records_keep_one_linear_chain(audit: AuditLog, db: str) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                audit.record(f"user-{n}", "chat", detail={"i": i})
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = audit.verify()
    assert result.ok and result.rows == 200
    assert [seq for (seq,) in sql(db, "SELECT seq FROM kb_audit ORDER BY seq")] == list(range(1, 201))


def test_secrets_in_detail_and_target_are_masked_in_the_stored_row(audit: AuditLog, db: str) -> None:
    audit.record(
        "alice",
        "tool_call",
        target="postgresql://svc:hunter2hunter2@db.internal/payments",
        outcome="error",
        detail={
            "command": "psql --password=hunter2hunter2",
            "env": "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "password": "hunter2hunter2",
            "nested": [{"api_key": "abc123abc123"}],
        },
    )
    (stored,) = sql(db, "SELECT concat_ws(' ', target, detail::text) FROM kb_audit")[0]
    for secret in ("hunter2hunter2", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "abc123abc123"):
        assert secret not in stored
    assert "[MASKED:" in stored and "psql" in stored and "db.internal" in stored
    assert audit.verify().ok


def test_huge_targets_and_payloads_are_capped(audit: AuditLog, db: str) -> None:
    audit.record("alice", "document_read", target="t" * 100_000, detail={"blob": "x" * 1_000_000, "ids": list(range(10_000))})
    audit.record("alice", "document_read", detail={"many": ["y" * 1_500] * 100})
    rows = sql(db, "SELECT length(coalesce(target, '')), length(detail::text), detail FROM kb_audit ORDER BY seq")
    assert rows[0][0] <= MAX_TARGET_CHARS and all(length <= MAX_DETAIL_CHARS + 100 for _, length, _ in rows)
    assert len(rows[0][2]["ids"]) == 101 and rows[1][2]["truncated"] is True
    assert audit.verify().ok


def test_values_postgres_normalises_still_verify(audit: AuditLog) -> None:
    audit.record(
        "алиса",
        "query",
        target="nul\x00byte",
        detail={
            "big": 1e20,
            "tiny": 1e-7,
            "neg_zero": -0.0,
            "nan": float("nan"),
            "huge": 10**40,
            "text": "пароль 密码 ✓ \ud800",
            "when": T0,
            "bytes": b"\x00\x01",
            7: {"nested": (1, 2)},
        },  # fmt: skip
    )
    assert audit.verify().ok


def test_export_since_returns_exactly_the_rows_from_that_time(audit: AuditLog, clock: Clock) -> None:
    for hours in range(4):
        clock.now = T0 + timedelta(hours=hours)
        audit.record("alice", "query", detail={"h": hours})
    since = list(audit.export(T0 + timedelta(minutes=90)))
    assert [row["seq"] for row in since] == [3, 4]
    window = list(audit.export(T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)))
    assert [row["seq"] for row in window] == [2, 3]  # since inclusive, until exclusive
    assert datetime.fromisoformat(window[0]["at"]) == T0 + timedelta(hours=1)
    assert set(window[0]) == {"seq", "at", "actor", "action", "target", "outcome", "detail", "prev", "mac"}
    assert [row["seq"] for row in audit.export(None)] == [1, 2, 3, 4]


def _cli_env(db: str, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": db, "KB_AUTH_AUDIT_KEY": KEY.hex(), "KB_DATA_DIR": str(tmp_path)}


def test_cli_verify_json_reports_the_chain_and_exits_1_when_broken(audit: AuditLog, db: str, tmp_path: Path) -> None:
    record_n(audit, 2)
    runner = CliRunner()
    good = runner.invoke(audit_app, ["verify", "--json"], env=_cli_env(db, tmp_path))
    assert good.exit_code == 0, good.output
    report = json.loads(good.stdout)
    assert report["ok"] is True and report["rows"] == 2 and report["last_seq"] == 2 and report["first_bad_seq"] is None
    noted = f"{report['last_seq']}:{report['last_mac']}"
    sql(db, "UPDATE kb_audit SET outcome = 'denied' WHERE seq = 1")
    bad = runner.invoke(audit_app, ["verify", "--json", "--expect", noted], env=_cli_env(db, tmp_path))
    assert bad.exit_code == 1
    assert json.loads(bad.stdout) | {"problem": None} == {"ok": False, "rows": 2, "first_bad_seq": 1, "problem": None,
                                                         "last_seq": 2, "last_mac": report["last_mac"]}  # fmt: skip


def test_cli_verify_without_a_key_fails_and_creates_none(db: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db, "KB_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(audit_app, ["verify", "--json"], env=env | {"KB_AUTH_AUDIT_KEY": ""})
    assert result.exit_code == 2 and "no audit key" in result.stderr
    assert not (tmp_path / "audit.key").exists()


def test_cli_export_writes_json_lines_since_a_relative_age(audit: AuditLog, clock: Clock, db: str, tmp_path: Path) -> None:
    clock.now = datetime.now(UTC) - timedelta(days=2)
    audit.record("alice", "sign_in")
    clock.now = datetime.now(UTC) - timedelta(minutes=5)
    audit.record("bob", "sign_in_failed", outcome="denied")
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(audit_app, ["export", "--since", "1d", "--output", str(out)], env=_cli_env(db, tmp_path))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(row["actor"], row["outcome"]) for row in lines] == [("bob", "denied")]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    to_stdout = CliRunner().invoke(audit_app, ["export", "--since", "2020-01-01"], env=_cli_env(db, tmp_path))
    assert [json.loads(line)["actor"] for line in to_stdout.stdout.splitlines()] == ["alice", "bob"]


def test_audit_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError):
        audit_key(tmp_path / "data", None, create=False)
    first = audit_key(tmp_path / "data", None)
    assert len(first) == 32 and audit_key(tmp_path / "data", None) == first
    assert stat.S_IMODE((tmp_path / "data" / "audit.key").stat().st_mode) == 0o600
    (tmp_path / "data" / "audit.key").chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        audit_key(tmp_path / "data", None)


def test_a_configured_key_is_read_as_hex_or_base64_and_a_short_one_is_refused(tmp_path: Path) -> None:
    import base64

    raw = bytes(range(100, 140))
    assert audit_key(tmp_path, raw.hex()) == raw
    assert audit_key(tmp_path, base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    with pytest.raises(AuditKeyError, match="at least 32") as refused:
        audit_key(tmp_path, "ab" * 16 + "cd" * 8)
    assert "abab" not in str(refused.value)
    assert not (tmp_path / "audit.key").exists()


def test_cli_database_starts_the_embedded_server_only_when_it_is_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kb.access.cli_db import cli_database
    from kb.platform import embedded_postgres, free_port
    from kb.settings import PlatformSettings, PostgresSettings

    monkeypatch.delenv("DATABASE_URL", raising=False)
    platform = PlatformSettings(data_dir=tmp_path / "data", postgres_port=free_port())
    server = embedded_postgres(platform)
    with cli_database(platform, PostgresSettings()) as url:
        assert server.is_running() and sql(url, "SELECT to_regclass('kb_audit') IS NOT NULL")[0][0]
    assert not server.is_running()  # started for the command, stopped after it
    server.start()  # as `kb up` would have
    try:
        with cli_database(platform, PostgresSettings()) as url:
            assert url == server.url
        assert server.is_running()  # someone else's server is left running
    finally:
        server.stop()
