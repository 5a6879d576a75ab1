"""Alembic environment: migrations run online against the configured URL."""

from alembic import context
from sqlalchemy import engine_from_config, pool, text

from query_engine.memory import Base

config = context.config
with engine_from_config(
    config.get_section(config.config_ini_section) or {}, prefix="sqlalchemy.", poolclass=pool.NullPool
).connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table="kb_alembic_version")
    with context.begin_transaction():
        # API replicas starting together on one database migrate one at a time (the others then find it done);
        # the lock is the transaction's, so it ends with the migration. Key: b"kb_migra" as a big-endian integer.
        connection.execute(text("SELECT pg_advisory_xact_lock(7737852033300394593)"))
        context.run_migrations()
