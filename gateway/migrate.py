"""Running the Alembic revisions from the CLI, the server's start-up and the tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.sqlite_setup import ensure_sqlite_directory
from resolvers.models import Base

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would choke on a % in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    if database_url.startswith("sqlite"):
        ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def row_counts(database_url: str) -> dict[str, int]:
    """Rows in each of the gateway's tables that exist (what a downgrade would drop)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            present = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            return {
                table.name: int(await connection.scalar(select(func.count()).select_from(table)))
                for table in Base.metadata.sorted_tables
                if table.name in present
            }
    finally:
        await engine.dispose()


def database_name(database_url: str) -> str:
    """What an operator types to confirm: the PostgreSQL database, or the SQLite file's name."""
    url = make_url(database_url)
    return Path(url.database).name if url.drivername.startswith("sqlite") else str(url.database)
