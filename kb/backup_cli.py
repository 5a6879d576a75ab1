"""`kb backup` and `kb restore`: the platform's state into one (optionally encrypted) archive, and back.

Plain command functions; kb/cli.py registers them (`app.command("backup")(backup_command)`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import psycopg
import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
# What a failing backup or restore reports as a message and exit code 1 (anything else is a bug: a traceback).
_EXPECTED = (OSError, ValueError, psycopg.Error, subprocess.CalledProcessError)


def backup_command(
    output: Annotated[Path | None, typer.Option("--output", help="Folder for the archive; default $KB_DATA_DIR/backups.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Archive everything not derived from sources: the databases (sessions, audit log, index, Dagster runs), the audit
    key and Qdrant's collections; encrypted when KB_BACKUP_PASSPHRASE is set. Runs whether or not the platform is up."""
    from kb.access.cli_db import cli_database
    from kb.ops.backup import BackupError, BackupSettings, create_backup, record_backup
    from kb.settings import IndexSettings, PlatformSettings, PostgresSettings

    try:
        platform, postgres, index, settings = PlatformSettings(), PostgresSettings(), IndexSettings(), BackupSettings()
        # cli_database: the embedded server started for the command when it is not running, and the schema
        # migrated, so the backup is recorded in kb_backups.
        with cli_database(platform, postgres) as url:
            result = create_backup(platform, postgres, index, output or platform.data_dir / "backups", settings.passphrase_text())
            record_backup(url, result, "cli")
    except (BackupError, *_EXPECTED) as error:
        _fail("backup", error)
    data = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        kind = "encrypted" if result.encrypted else "not encrypted: set KB_BACKUP_PASSPHRASE to encrypt"
        typer.echo(f"backup written to {result.archive} ({result.size:,} bytes, {kind}) in {result.seconds}s")


def restore_command(
    path: Annotated[Path, typer.Argument(help="An archive `kb backup` wrote (.tar, or .tar.enc with KB_BACKUP_PASSPHRASE).")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a data directory that is not empty (its PostgreSQL, audit key, Qdrant folder)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Restore an archive into the configured data directory, which must be empty unless --force; stop the platform
    first. The whole archive is verified (checksums, passphrase) before anything changes."""
    from kb.ops.backup import BackupError, BackupSettings, restore_backup
    from kb.settings import IndexSettings, PlatformSettings, PostgresSettings

    try:
        platform, postgres, index, settings = PlatformSettings(), PostgresSettings(), IndexSettings(), BackupSettings()
        result = restore_backup(path, platform, postgres, index, settings.passphrase_text(), force)
    except (BackupError, *_EXPECTED) as error:
        _fail("restore", error)
    data: dict[str, Any] = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        typer.echo(f"restored {path} into {result.data_dir} in {result.seconds}s: {sum(result.rows.values()):,} rows, "
                   f"index {result.index}")  # fmt: skip
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


def _fail(what: str, error: BaseException) -> NoReturn:
    from pydantic import ValidationError

    from assets.mask import mask_secrets

    # A settings error's text carries the input values (an API key among them): name the problems only.
    message = ("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
               if isinstance(error, ValidationError) else str(error))  # fmt: skip
    typer.echo(f"error: {what} failed: {mask_secrets(message).text}", err=True)
    raise typer.Exit(1) from None
