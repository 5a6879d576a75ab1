"""The daily backup job: an archive into $KB_DATA_DIR/backups at 02:30 UTC, the newest KB_BACKUP_KEEP kept,
each success recorded in kb_backups (which `kb_backup_last_success_timestamp` reads)."""

import os
from pathlib import Path
from typing import Any

import dagster as dg

from kb.ops.backup import BackupSettings, create_backup, prune_backups, record_backup
from kb.settings import IndexSettings, PlatformSettings, PostgresSettings

CRON = "30 2 * * *"


class BackupResource(dg.ConfigurableResource):
    """What the backup reads and where it writes; secrets (passphrase, DATABASE_URL, Qdrant key) only as EnvVars."""

    data_dir: str
    host: str = "127.0.0.1"
    postgres_port: int = 5433
    database_url: str | None = None
    qdrant_url: str | None = None
    qdrant_path: str | None = None
    qdrant_api_key: str | None = None
    passphrase: str | None = None
    keep: int = 7

    def settings(self) -> tuple[PlatformSettings, PostgresSettings, IndexSettings]:
        platform = PlatformSettings(data_dir=Path(self.data_dir), host=self.host, postgres_port=self.postgres_port)
        # Keyed by their variable names (the fields' aliases); given explicitly, they win over the environment.
        postgres = PostgresSettings.model_validate({"DATABASE_URL": self.database_url})
        index = IndexSettings.model_validate(
            {"QDRANT_URL": self.qdrant_url, "QDRANT_PATH": self.qdrant_path, "QDRANT_API_KEY": self.qdrant_api_key}
        )
        return platform, postgres, index

    @property
    def directory(self) -> Path:
        return Path(self.data_dir) / "backups"


@dg.op(description="Write a backup archive, record it in kb_backups, then keep only the newest `keep` archives.")
def backup_platform(context: dg.OpExecutionContext, backups: BackupResource) -> dg.Output[dict[str, Any]]:
    from kb.access.cli_db import cli_database

    platform, postgres, index = backups.settings()
    with cli_database(platform, postgres) as url:
        result = create_backup(platform, postgres, index, backups.directory, backups.passphrase or None)
        record_backup(url, result, "dagster")
    # Only after a success: a failing backup never costs an older archive.
    removed = prune_backups(backups.directory, backups.keep)
    context.log.info(f"backup {result.archive.name}: {result.size} bytes; removed {len(removed)} older archive(s)")
    return dg.Output(
        result.as_dict(),
        metadata={
            "archive": str(result.archive),
            "bytes": result.size,
            "encrypted": result.encrypted,
            "seconds": result.seconds,
            "removed": [p.name for p in removed],
        },  # fmt: skip
    )


@dg.job(name="backup", description="Back up the platform's state (databases, audit key, Qdrant) into $KB_DATA_DIR/backups.")
def backup_job() -> None:
    backup_platform()


def _secret(name: str, value: str | None) -> Any:
    """The value as an EnvVar when it came from that variable, so it never sits in the resource's config."""
    return dg.EnvVar(name) if value and os.environ.get(name) == value else value


def build_backup_defs(platform: PlatformSettings, postgres: PostgresSettings, index: IndexSettings,
                      keep: int | None = None) -> dg.Definitions:  # fmt: skip
    """The job, its daily schedule and its resource (`keep` defaults to KB_BACKUP_KEEP)."""
    settings = BackupSettings()
    resource = BackupResource(
        data_dir=str(platform.data_dir),
        host=platform.host,
        postgres_port=platform.postgres_port,
        database_url=_secret("DATABASE_URL", postgres.database_url),
        qdrant_url=index.qdrant_url,
        qdrant_path=str(index.qdrant_path) if index.qdrant_path else None,
        qdrant_api_key=_secret("QDRANT_API_KEY", index.qdrant_api_key),
        passphrase=_secret("KB_BACKUP_PASSPHRASE", settings.passphrase_text()),
        keep=keep if keep is not None else settings.keep,
    )
    schedule = dg.ScheduleDefinition(name="backup_daily", job=backup_job, cron_schedule=CRON, execution_timezone="UTC",
                                     default_status=dg.DefaultScheduleStatus.RUNNING)  # fmt: skip
    return dg.Definitions(jobs=[backup_job], schedules=[schedule], resources={"backups": resource})
