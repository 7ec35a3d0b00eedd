"""The Alembic revisions: up from empty to head and back down, and in step with the ORM tables."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import migrate
from resolvers.models import Base

ORM_TABLES = set(Base.metadata.tables)


def on_connection(url: str, fn: Any) -> Any:
    """Run `fn(sync_connection)` against the database at `url`."""

    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def tables(url: str) -> set[str]:
    return on_connection(url, lambda c: set(inspect(c).get_table_names()))


def revision(url: str) -> str | None:
    return on_connection(url, lambda c: MigrationContext.configure(c).get_current_revision())


def test_upgrade_to_head_and_down_to_base_and_up_again(empty_database_url: str) -> None:
    url = empty_database_url
    assert tables(url) == set()

    migrate.upgrade(url)
    assert tables(url) == ORM_TABLES | {"alembic_version"}
    assert revision(url) == migrate.head_revision()

    migrate.downgrade(url, "base")
    assert tables(url) == {"alembic_version"}
    assert revision(url) is None

    migrate.upgrade(url)
    assert tables(url) == ORM_TABLES | {"alembic_version"}


def test_every_revision_steps_up_and_down_one_at_a_time(empty_database_url: str) -> None:
    url = empty_database_url
    script = ScriptDirectory.from_config(migrate.alembic_config(url))
    ordered = [r.revision for r in reversed(list(script.walk_revisions()))]
    for expected in ordered:
        migrate.upgrade(url, "+1")
        assert revision(url) == expected
    for expected in [*reversed(ordered[:-1]), None]:
        migrate.downgrade(url, "-1")
        assert revision(url) == expected
    assert tables(url) == {"alembic_version"}


def test_orm_tables_and_migrations_agree(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)

    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    # What `alembic revision --autogenerate` would write: nothing.
    assert on_connection(empty_database_url, differences) == []
