"""entitlements db: migrations up and down."""

from __future__ import annotations

import click
from sqlalchemy.exc import DBAPIError

from gateway import migrate
from gateway.cli.command import (
    database_failure,
    fail,
    load_settings,
)


@click.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database (DATABASE_URL) up to REVISION."""
    settings = load_settings()
    try:
        migrate.upgrade(settings.database_url, revision)
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True, help="'base' removes everything.")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (one step by default)."""
    settings = load_settings()
    try:
        migrate.downgrade(settings.database_url, revision)
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    click.echo(f"database at {revision}")
