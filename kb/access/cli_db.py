"""The database for one CLI command (audit, API keys): DATABASE_URL, or the embedded server that `kb up` runs,
started just for the command when it is not running, and stopped after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kb.settings import PlatformSettings, PostgresSettings


@contextmanager
def cli_database(platform: PlatformSettings, postgres: PostgresSettings) -> Iterator[str]:
    """Yield the kb database URL, migrated to the newest schema."""
    # kb.platform and not pipelines.definitions.database_url (the same URL): a CLI command on the audit log
    # should not load the Dagster definitions to learn a connection string.
    from kb.platform import embedded_postgres
    from query_engine.memory import migrate

    if postgres.database_url:
        migrate(postgres.database_url)
        yield postgres.database_url
        return
    server = embedded_postgres(platform)  # the data directory and port `kb up` uses
    started_here = not server.is_running()
    try:
        url = server.start()
        migrate(url)
        yield url
    finally:
        if started_here:
            server.stop()
