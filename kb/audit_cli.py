"""`kb audit …`: verify the audit log's HMAC chain, export it as JSON lines, apply its retention."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

if TYPE_CHECKING:
    from kb.access.audit import AuditLog

audit_app = typer.Typer(help="The audit log: verify its HMAC chain, export it, purge old rows.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta | None:
    """`30d`, `12h`, `15m`, `90s`, `2w` as a timedelta; None for anything else."""
    match = _AGE.fullmatch(text.strip())
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else None


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO date or datetime (UTC unless it carries an offset), or an age before `now` (`30d`, `12h`)."""
    age = parse_age(text)
    if age is not None:
        return now - age
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither an ISO date/datetime nor an age such as 30d or 12h") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def _audit_log() -> Iterator[AuditLog]:
    """The audit log of the configured database; the key is read first, so a missing one fails before any server
    starts, and never created here (a new key would only make every row look forged)."""
    from kb.access.audit import AuditKeyError, AuditLog, audit_key
    from kb.access.cli_db import cli_database
    from kb.settings import AuthSettings, PlatformSettings, PostgresSettings

    platform = PlatformSettings()
    try:
        key = audit_key(platform.data_dir, AuthSettings().audit_key, create=False)
    except AuditKeyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    with cli_database(platform, PostgresSettings()) as url, AuditLog(url, key, pool_size=1) as log:
        yield log


def _parse_expect(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    seq, _, mac = text.partition(":")
    if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", mac):
        raise typer.BadParameter("--expect takes SEQ:MAC as an earlier `verify` printed them (last_seq, last_mac)")
    return int(seq), mac


@audit_app.command("verify")
def verify(
    expect: Annotated[
        str | None,
        typer.Option(help="SEQ:MAC noted down from an earlier verify (last_seq:last_mac): fails if that row is gone or changed."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recompute every row's mac and link, and check the head; exit code 1 when the log was tampered with."""
    noted = _parse_expect(expect)
    with _audit_log() as log:
        result = log.verify(noted)
    data = {"ok": result.ok, "rows": result.rows, "first_bad_seq": result.first_bad_seq, "problem": result.problem,
            "last_seq": result.last_seq, "last_mac": result.last_mac}  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    elif result.ok:
        typer.echo(f"audit log ok: {result.rows} rows; note down {result.last_seq}:{result.last_mac} for --expect")
    else:
        typer.echo(f"audit log NOT ok at row {result.first_bad_seq}: {result.problem}")
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def export(
    since: Annotated[str, typer.Option(help="ISO date/datetime (UTC unless it has an offset) or an age: 30d, 12h.")],
    until: Annotated[str | None, typer.Option(help="End (exclusive), same forms as --since; default: none.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write JSON lines here (mode 0600) instead of stdout.")] = None,
) -> None:
    """Rows from --since (inclusive) to --until as JSON lines, oldest first, with prev and mac."""
    now = datetime.now(UTC)
    start, end = parse_since(since, now), (parse_since(until, now) if until else None)
    with _audit_log() as log:
        if output is None:
            count = _write_lines(log.export(start, end), sys.stdout)
        else:
            with _private_file(output) as file:
                count = _write_lines(log.export(start, end), file)
    typer.echo(f"{count} rows exported" + (f" to {output}" if output else ""), err=True)


@audit_app.command("purge")
def purge(
    older_than: Annotated[str, typer.Option(help="Retention: rows older than this age go (365d, 12w).")] = "365d",
    as_json: JsonFlag = False,
) -> None:
    """Delete rows older than the retention from the start of the chain; verify still passes afterwards."""
    from kb.access.audit import AuditError

    age = parse_age(older_than)
    if age is None or age <= timedelta(0):
        raise typer.BadParameter(f"--older-than takes a positive age such as 365d, not {older_than!r}")
    with _audit_log() as log:
        try:
            purged = log.purge(age)
        except AuditError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps({"purged": purged}) if as_json else f"{purged} rows purged")


def _write_lines(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


@contextmanager
def _private_file(path: Path) -> Iterator[TextIO]:
    """An export names users and what they did: readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        yield file
