"""Database fixtures: every database test runs on a temp SQLite file and on PostgreSQL.

PostgreSQL is the server at TEST_POSTGRES_URL (default: the local `test` database). Each pytest
run migrates a database of its own (named after its process id) once, and empties it before each
test, so runs side by side never see each other's rows. Without a reachable server the
PostgreSQL cases are skipped, unless REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
import time_machine
from sqlalchemy import event

from gateway import migrate
from gateway.clock import (
    ALLOW_TEST_CLOCK,
    TEST_CLOCK,
    ClockSettingError,
    parse_instant,
    subprocess_clock_env,
)
from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog
from resolvers.models import Base

T = TypeVar("T")
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")


def postgres_admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES)


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _pg_execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def kill_server_sessions(url: str) -> int:
    """Ends every other session on the test's PostgreSQL database, as a server restart would
    (the pools' connections die without knowing it); how many were ended."""
    admin = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    try:
        return await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run blocking set-up (Alembic, asyncio.run) off the test's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def pg_execute(url: str, *statements: str) -> None:
    in_thread(asyncio.run, _pg_execute(url, *statements))


def _postgres_reachable() -> str | None:
    try:
        pg_execute(postgres_admin_url(), "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    in_thread(migrate.upgrade, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    problem = _postgres_reachable()
    if problem:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required but unreachable at {postgres_admin_url()}: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    admin = postgres_admin_url()
    name = f"entitlements_test_{os.getpid()}"
    pg_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
    url = with_database(admin, name)
    in_thread(migrate.upgrade, url)
    yield url
    pg_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A migrated, empty database of the test's backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "entitlements.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_database")
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    await _pg_execute(url, f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    yield url


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A database with nothing in it (not even migrated), of the test's backend."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    # Skips (or fails under REQUIRE_POSTGRES=1) like every other PostgreSQL case.
    request.getfixturevalue("postgres_database")
    admin = postgres_admin_url()
    name = f"entitlements_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pg_execute(admin, f"CREATE DATABASE {name}")
    try:
        yield with_database(admin, name)
    finally:
        pg_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--start-at",
        metavar="INSTANT",
        default=None,
        help="Start the whole suite's clock at this ISO 8601 instant (e.g. 2027-01-31T23:59:30Z)"
        " and let it tick on; every test's clock and every subprocess start from it.",
    )


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--start-at")
    if not value:
        return
    try:
        instant = parse_instant(value, "--start-at")
    except ClockSettingError as exc:
        raise pytest.UsageError(str(exc)) from None
    traveller = time_machine.travel(instant, tick=True)
    traveller.start()
    config.add_cleanup(traveller.stop)


@pytest.fixture(autouse=True)
def subprocess_clock() -> Iterator[None]:
    """Every subprocess a test starts (the CLI, a server) reads the test's clock, not the wall's."""
    saved = {name: os.environ.get(name) for name in (TEST_CLOCK, ALLOW_TEST_CLOCK)}
    os.environ.update(subprocess_clock_env(datetime.now(UTC)))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class Clock:
    """A settable clock: resolvers take `now`, tests move it, and subprocesses follow it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @property
    def now(self) -> datetime:
        return self._now

    @now.setter
    def now(self, value: datetime) -> None:
        self._now = value
        os.environ.update(subprocess_clock_env(value))

    def __call__(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock(subprocess_clock: None) -> Clock:
    """Starts at the current instant (the suite's, under --start-at), whole seconds."""
    return Clock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
async def runtime(settings: Settings, clock: Clock) -> AsyncIterator[Runtime]:
    rt = Runtime(
        settings=settings,
        db=Database(settings.database_url, pool_size=5),
        catalog=load_catalog(settings.catalog_path),
        clock=clock,
    )
    yield rt
    await rt.close()


@pytest.fixture
def db(runtime: Runtime) -> Database:
    return runtime.db


class StatementCounter:
    """Counts the SQL statements an engine sends (BEGIN/COMMIT excluded)."""

    def __init__(self, database: Database) -> None:
        self.count = 0
        self.statements: list[str] = []
        self._engine = database.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *args: object) -> None:
        statement = str(args[2])
        if statement.strip().upper() not in ("BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"):
            self.count += 1
            self.statements.append(statement)

    def reset(self) -> None:
        self.count = 0
        self.statements.clear()

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on_execute)


@pytest.fixture
def count_statements(db: Database) -> Iterator[StatementCounter]:
    counter = StatementCounter(db)
    yield counter
    counter.close()


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
