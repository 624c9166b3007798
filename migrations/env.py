"""Alembic environment: the URL comes from kyc (KYC_DATABASE_URL or the caller's config)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from kyc.config import Config
from kyc.db import Base
import kyc.models  # noqa: F401 - registers the tables on Base.metadata

config = context.config
url = config.get_main_option("sqlalchemy.url") or Config.from_env().database_url
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # Batch mode lets ALTERs work on SQLite (copy-and-move), and is a no-op on PostgreSQL.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
