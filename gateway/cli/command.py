"""What every command shares: settings, a runtime per command, one-line failures, JSON output."""

from __future__ import annotations

import asyncio
import atexit
import getpass
import json
import logging
import logging.handlers
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from gateway.db import DatabaseUnavailable
from gateway.logs import configure_logging, request_id_var
from gateway.runtime import Runtime
from gateway.settings import Settings, SettingsError
from resolvers.catalog.model import CatalogError
from resolvers.ledger import entries as ledger

T = TypeVar("T")
log = logging.getLogger("gateway.cli")


# A command's log lines wait until it ends: a failure then prints its one line alone, with no
# JSON line before it; a long command still writes them out every few thousand.
_held_lines = logging.handlers.MemoryHandler(capacity=5_000, flushLevel=logging.CRITICAL + 1)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1: what scripts and support engineers both can read."""
    with _held_lines.lock:
        _held_lines.buffer.clear()
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def hold_log_lines() -> None:
    """Route the command's log lines through the holding buffer, written out when it ends."""
    root = logging.getLogger()
    _held_lines.setTarget(root.handlers[0] if root.handlers else logging.lastResort)
    root.handlers[:] = [_held_lines]
    atexit.register(_held_lines.flush)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def run_with_runtime(work: Callable[[Runtime], Awaitable[T]]) -> T:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    hold_log_lines()

    async def main() -> T:
        try:
            runtime = Runtime.from_settings(settings, pool_size=2)
        except CatalogError as exc:
            fail(str(exc))
        try:
            return await work(runtime)
        except (OSError, DBAPIError, DatabaseUnavailable) as exc:
            fail(database_failure(exc))
        finally:
            await runtime.close()

    return asyncio.run(main())


def database_failure(exc: OSError | DBAPIError | DatabaseUnavailable) -> str:
    """One line for a database that cannot be reached or used; the traceback at DEBUG only.

    Never the URL itself: it may carry a password.
    """
    log.debug("database failure", exc_info=exc)
    if isinstance(exc, DatabaseUnavailable) and isinstance(exc.__cause__, OSError | DBAPIError):
        exc = exc.__cause__
    if isinstance(exc, DBAPIError):
        detail = (str(exc.orig).strip().splitlines() or [""])[0]
        return (
            f"database error: {type(exc.orig).__name__}: {detail}"
            " (is DATABASE_URL right and migrated? entitlements db upgrade)"
        )
    return f"DATABASE_URL: cannot reach the database: {type(exc).__name__}: {exc}"


def cli_actor(source: str = "support") -> ledger.Actor:
    """The CLI's actor: the operator's login, under a fresh correlation id for this command."""
    request_id = f"cli-{uuid.uuid4().hex}"
    request_id_var.set(request_id)
    return ledger.Actor(name=f"cli:{getpass.getuser()}", source=source, request_id=request_id)


def echo_json(document: Any, *, compact: bool) -> None:
    click.echo(json.dumps(document, default=str, indent=None if compact else 2))


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--expires-at: not an ISO 8601 time: {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run_with_runtime(lambda runtime: fn(runtime, *args, **kwargs))

    return wrapper
