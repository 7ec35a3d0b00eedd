"""entitlements serve: the gateway under uvicorn."""

from __future__ import annotations

import click

from gateway import migrate
from gateway.cli.command import (
    load_settings,
)
from gateway.logs import configure_logging


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option(
    "--migrate/--no-migrate",
    "migrate_first",
    default=None,
    help="Migrate before serving (default: yes on SQLite, no on PostgreSQL).",
)
def serve(host: str, port: int, workers: int, migrate_first: bool | None) -> None:
    """Serve the gateway with uvicorn."""
    import uvicorn

    settings = load_settings()
    if settings.is_sqlite if migrate_first is None else migrate_first:
        migrate.upgrade(settings.database_url)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        "gateway.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
    )
