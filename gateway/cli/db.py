"""entitlements db: migrations up and down."""

from __future__ import annotations

import asyncio
import sys

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
@click.option(
    "--revision",
    required=True,
    help="The revision to go down to: 'base' (nothing left), a revision id, or -1 (one step).",
)
@click.option("--yes", is_flag=True, help="Drop the tables and their rows without asking.")
def db_downgrade(revision: str, yes: bool) -> None:
    """Migrate the database down to REVISION, DROPPING the tables of every revision above it.

    Every row in a dropped table is lost: users, their credit grants and ledger events,
    payments, stored Stripe events, API keys. On a database that holds rows this asks for
    the database's name to be typed, or needs --yes.
    """
    settings = load_settings()
    try:
        rows = asyncio.run(migrate.row_counts(settings.database_url))
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    held = {table: count for table, count in rows.items() if count}
    if held and not yes:
        listing = ", ".join(f"{table} ({count} rows)" for table, count in held.items())
        name = migrate.database_name(settings.database_url)
        if not sys.stdin.isatty():
            fail(f"the database holds data ({listing}); downgrading drops it: add --yes")
        click.echo(f"Downgrading to {revision} drops tables holding: {listing}.", err=True)
        typed = click.prompt(f"Type the database name ({name}) to go on", err=True)
        if typed != name:
            fail("not confirmed; nothing was changed")
    try:
        migrate.downgrade(settings.database_url, revision)
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    click.echo(f"database at {revision}")
