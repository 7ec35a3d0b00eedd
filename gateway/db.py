"""The database engine, read sessions, and the unit of work every write goes through."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import SimpleNamespace
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util.concurrency import greenlet_spawn

from gateway.driver_pool import DriverPool, LentConnection
from gateway.local_reads import LocalReads
from gateway.logs import log_entitlement_changes
from gateway.meter import MeteredPool, current_meter, meter_engine
from gateway.read_batches import ReadBatches
from gateway.sqlite_setup import SQLITE_BUSY_TIMEOUT_MS, configure_sqlite, ensure_sqlite_directory
from resolvers.errors import Failure
from resolvers.ledger.changes import changed_user_ids, take_changes
from resolvers.ledger.statements import ONE_TRANSACTION, TRIED_ALONE, OnDriver, Statements
from resolvers.unit_of_work import DatabaseUnreachable

T = TypeVar("T")
BeforeCommit = Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[None]]
# A change done by one statement before any session (resolvers.ledger.statements): its answer,
# or None for the unit of work to make in a transaction instead.
Alone = Callable[[Statements], Awaitable[T | None]]
log = logging.getLogger("gateway.db")

MAX_ATTEMPTS = 5
# PostgreSQL: serialization failure, deadlock, unique violation (a concurrent idempotent retry or
# upsert won the race: the next attempt sees its row). SQLite: the busy timeout ran out.
_RETRY_SQLSTATES = {"40001", "40P01", "23505"}
# Taken by SQLAlchemy's asyncpg adapter from the URL's query; asyncpg.connect refuses them.
_ADAPTER_ONLY_PARAMETERS = (
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
    "async_creator_fn",
)


# PostgreSQL: connection exceptions (class 08), and the server shutting down or starting up.
_UNREACHABLE_SQLSTATES = {"57P01", "57P02", "57P03"}


class DatabaseUnavailable(DatabaseUnreachable):
    """The database cannot be reached (refused, gone, timed out): nothing was done; retry."""


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached, rather than refused a statement."""
    if isinstance(exc, DatabaseUnavailable | PoolTimeout | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
        if "unable to open database file" in str(exc):
            return True
    # asyncpg raises its connect errors unwrapped: OSError (refused), or its own with a state.
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, OSError):
            return True
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _UNREACHABLE_SQLSTATES):
            return True
    return False


@asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if is_unreachable(exc):
            raise DatabaseUnavailable(type(exc).__name__) from exc
        raise


class Database:
    def __init__(self, url: str, *, pool_size: int = 20, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.max_connections: int | None = None  # SQLite: no server to run out of
        kwargs: dict[str, Any] = {"echo": echo, "poolclass": MeteredPool}
        lent = 0
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            ensure_sqlite_directory(url)
        else:
            # The most this process opens: size workers x replicas against max_connections.
            budget = pool_size + pool_size // 4
            # Half of it lent past SQLAlchemy (lend_driver's own pool, gateway.driver_pool), half
            # SQLAlchemy's: the two together open no more than the budget. SQLAlchemy's keeps at
            # least two: the hold sweep holds its lock's connection while it writes
            # (gateway.sweeps), and with one it would wait for itself. A budget too small to
            # split (the CLI's) lends from SQLAlchemy's pool, as lend_driver does on SQLite.
            lent = min(budget // 2, max(0, budget - 2))
            pooled = budget - lent
            self.max_connections = budget
            # All of it kept open, no overflow: overflow connections are closed when returned,
            # and under 32 concurrent viewer reads that was a new PostgreSQL session (a server
            # fork) for every seventh request. Past the budget requests wait for a connection.
            kwargs.update(pool_size=pooled, max_overflow=0, pool_pre_ping=False)
            if _is_loopback(url):
                # asyncpg tries TLS first by default; on loopback there is nothing to protect.
                kwargs["connect_args"] = {"ssl": False}
        self._connect_args: dict[str, Any] = kwargs.get("connect_args", {})
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # SQLite: compiled by-key reads on the loop's own read-only connections.
        self.local_reads = LocalReads.of(url, self.engine.sync_engine) if self.is_sqlite else None
        if self.is_sqlite:
            configure_sqlite(self.engine)
        meter_engine(self.engine)
        self._lent_pool = DriverPool(self._connect_lent, lent, current_meter) if lent else None
        # PostgreSQL: compiled by-key reads of concurrent requests joined into one statement.
        self.read_batches = (
            ReadBatches(
                self.lend_driver,
                joined=lambda: current_meter().statement(),
                answered=lambda requests: current_meter().joined_reads(requests),
            )
            if lent
            else None
        )
        # Write transactions on SQLite take the write lock at BEGIN (IMMEDIATE): two deferred
        # transactions that both read and then write would deadlock, one failing with "busy".
        writer = self.engine.execution_options(entitlements_write=True)
        self._reader = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._read_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = async_sessionmaker(writer, expire_on_commit=False)
        # Told the users each committed write changed (gateway.live: SQLite's in-process push).
        self.on_commit: Callable[[list[int]], None] | None = None
        # Called in every committing write transaction with the changes it queued, just before
        # COMMIT: the outbox writes the events they cause (resolvers.outbox.triggers).
        self.before_commit: BeforeCommit | None = None

    async def connect_outside_pool(self, **extra: Any) -> Any:
        """An asyncpg connection of its own, configured as the pool's are (PostgreSQL only).

        For LISTEN, which holds a session for the life of the process.
        """
        assert not self.is_sqlite, "SQLite has no server session to hold"
        _, params = self.engine.dialect.create_connect_args(self.engine.url)
        for adapter_only in _ADAPTER_ONLY_PARAMETERS:
            params.pop(adapter_only, None)
        return await asyncpg.connect(**{**params, **self._connect_args, **extra})

    async def _connect_lent(self) -> Any:
        """A connection for lend_driver's pool, decoding as SQLAlchemy's asyncpg adapter does."""
        connection = await self.connect_outside_pool()
        try:
            # The dialect's own codec set-up (JSON, JSONB, and inet when configured), as its
            # on_connect runs it for the engine's pool, given the adapter's `_connection`.
            adapted = SimpleNamespace(_connection=connection)
            dialect: Any = self.engine.dialect
            await dialect.setup_asyncpg_json_codec(adapted)
            await dialect.setup_asyncpg_jsonb_codec(adapted)
            if dialect._native_inet_types is False:
                await dialect._disable_asyncpg_inet_codecs(adapted)
        except BaseException:
            connection.terminate()
            raise
        return connection

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one-statement reads (dataloaders): no ORM, no transaction to end.

        On PostgreSQL it runs in autocommit, which saves the BEGIN and ROLLBACK round trips a
        single SELECT does not need; SQLite reads need no transaction either way.
        """
        async with _reachable(), self._reader.connect() as conn:
            yield conn

    async def lend_driver(self) -> LentConnection:
        """A pooled connection as the driver's own (asyncpg, aiosqlite), for one request's reads.

        Past SQLAlchemy's Connection: connect() and get_raw_connection() took three greenlet
        hops and about 130 µs of bookkeeping per request. On PostgreSQL the connection comes
        from a pool of asyncpg's own (gateway.driver_pool), with no hop at all; on SQLite from
        the engine's pool, in one hop. No transaction is begun: each statement is its own
        (autocommit). Give it back with `release`.
        """
        pool = self._lent_pool
        if pool is None:
            async with _reachable():
                fairy = await greenlet_spawn(self.engine.sync_engine.pool.connect)
            return LentConnection(fairy, self.engine.sync_engine, self.is_sqlite)
        try:
            connection = await pool.acquire()
        except Exception as exc:
            # As _reachable, without its context manager on the hot path.
            if is_unreachable(exc):
                raise DatabaseUnavailable(type(exc).__name__) from exc
            raise
        return LentConnection(connection, self.engine.sync_engine, False, pool)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; it never commits."""
        async with _reachable(), self._read_sessions() as session:
            yield session

    async def write(
        self, work: Callable[[AsyncSession], Awaitable[T]], alone: Alone[T] | None = None
    ) -> T:
        """Run `work` in one transaction and commit it, unless it returns a domain `Failure`.

        Retried from the start on a lost race (deadlock, serialization failure, a unique key a
        concurrent transaction took first, SQLite busy); `work` must therefore only touch the
        database through the session it is given. The `entitlement_change` lines the work
        queued go to `before_commit` (the outbox) first, and are logged after the commit, and
        only then. A database that cannot be reached raises DatabaseUnavailable.

        `alone`, on PostgreSQL without an outbox (whose events must commit with the change), is
        tried first: one statement on a lent driver connection, no session. Its None hands the
        change to `work`, in a session marked TRIED_ALONE.
        """
        async with _reachable():
            if alone is None or self.is_sqlite or self.before_commit is not None:
                return await self._write(work, tried_alone=False)
            done = await self._alone(alone)
            if done is not None:
                return done
            return await self._write(work, tried_alone=True)

    async def _alone(self, alone: Alone[T]) -> T | None:
        lent = await self.lend_driver()
        statements = OnDriver(lent.driver, lent.events)
        try:
            result = await alone(statements)
        finally:
            # Broken: a statement cut off or failed in a way SQLAlchemy did not see.
            await lent.release(broken=statements.broken)
        changes = take_changes(statements)
        if result is not None and not isinstance(result, Failure):
            self._committed(changes)
        return result

    def _committed(self, changes: list[dict[str, Any]]) -> None:
        log_entitlement_changes(changes)
        current_meter().changes([change["action"] for change in changes])
        # SQLite's in-process push; PostgreSQL's listeners hear of it from triggers
        # (migration 0007), so nothing is derived for them here.
        if self.on_commit is not None and (touched := changed_user_ids(changes)):
            self.on_commit(touched)

    async def _write(self, work: Callable[[AsyncSession], Awaitable[T]], *, tried_alone: bool) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            async with self._write_sessions() as session:
                if tried_alone:
                    session.info[TRIED_ALONE] = True
                if self.before_commit is not None:
                    # The outbox writes its events in this transaction: the change may not
                    # commit on its own (resolvers.ledger.statements' autocommit changes).
                    session.info[ONE_TRANSACTION] = True
                try:
                    result = await work(session)
                    changes = take_changes(session)
                    if isinstance(result, Failure):
                        await session.rollback()
                    else:
                        if self.before_commit is not None:
                            await self.before_commit(session, changes)
                        await session.commit()
                except DBAPIError as exc:
                    await session.rollback()
                    take_changes(session)
                    if attempt == MAX_ATTEMPTS or not self._is_retryable(exc):
                        raise
                    log.info("write lost a race, retrying (attempt %d): %s", attempt, exc.orig)
                    await asyncio.sleep(0.005 * attempt)
                    continue
                if not isinstance(result, Failure):
                    self._committed(changes)
                return result
        raise AssertionError("unreachable")

    def _is_retryable(self, exc: DBAPIError) -> bool:
        if self.is_sqlite:
            # Only a unique key a concurrent writer took first is a lost race; a CHECK or
            # foreign-key failure would fail the same way every time.
            message = str(exc.orig)
            return "locked" in message or (
                isinstance(exc, IntegrityError) and "UNIQUE constraint failed" in message
            )
        return getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES or (
            getattr(getattr(exc.orig, "__cause__", None), "sqlstate", None) in _RETRY_SQLSTATES
        )

    async def dispose(self) -> None:
        if self.local_reads is not None:
            self.local_reads.close()
        if self.read_batches is not None:
            await self.read_batches.close()
        if self._lent_pool is not None:
            await self._lent_pool.close()
        await self.engine.dispose()


class ReplicaReads:
    """Reads from a read replica, writes to the primary: what saved dashboard queries run on.

    The replica lags the primary a little; dashboards' rollups can, a support fix cannot, so
    only saved queries use it.
    """

    def __init__(self, primary: Database, replica: Database) -> None:
        self.primary = primary
        self.replica = replica
        self.is_sqlite = replica.is_sqlite
        self.local_reads = replica.local_reads
        self.read_batches = replica.read_batches

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.replica.connect()

    async def lend_driver(self) -> LentConnection:
        return await self.replica.lend_driver()

    def read(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self.replica.read()

    async def write(
        self, work: Callable[[AsyncSession], Awaitable[T]], alone: Alone[T] | None = None
    ) -> T:
        return await self.primary.write(work, alone)


def _is_loopback(url: str) -> bool:
    host = make_url(url).host or ""
    return host in ("127.0.0.1", "localhost", "::1") and "ssl" not in make_url(url).query
