"""entitlements serve: the gateway under uvicorn."""

from __future__ import annotations

import click

from gateway import migrate, multiprocess
from gateway.cli.command import (
    load_settings,
)
from gateway.logs import configure_logging


@click.command()
@click.option("--host", default=None, help="Listen address  [default: HOST, or 127.0.0.1]")
@click.option(
    "--port", default=None, type=click.IntRange(1, 65535), help="[default: PORT, or 8000]"
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--migrate/--no-migrate",
    "migrate_first",
    default=None,
    help="Migrate before serving (default: yes on SQLite, no on PostgreSQL).",
)
def serve(host: str | None, port: int | None, workers: int, migrate_first: bool | None) -> None:
    """Serve the gateway with uvicorn."""
    import uvicorn

    settings = load_settings()
    if settings.is_sqlite if migrate_first is None else migrate_first:
        migrate.upgrade(settings.database_url)
    configure_logging(settings.log_level, settings.log_format)
    # Set before the workers start: prometheus_client picks its storage when first imported.
    with multiprocess.metrics_directory(workers):
        uvicorn.run(
            "gateway.app:create_app_from_env",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            log_config=None,
            access_log=False,
        )
