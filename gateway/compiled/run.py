"""One request's run of a plan: its context, one database connection, and the rows read so far."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, cast

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.compiled.driver import OPEN_GRANTS, USERS_BY_ID, DriverRead
from gateway.db import Database
from gateway.driver_pool import LentConnection
from gateway.local_reads import LocalReads, Snapshot
from gateway.read_batches import ReadBatches
from schema.context import Context


class Fallback(Exception):
    """This request is answered by graphql-core instead (a refused field, a bad argument).

    Errors are rare on the hot path; graphql-core then gives them with its own order, paths
    and null propagation, so a compiled answer never differs from an interpreted one.
    """


class Run:
    """What the fields of one request share: the time, the catalog, one connection, the users.

    A plan fetches level by level, so there is never more than one statement in flight. On
    PostgreSQL each level's read joins those of concurrent requests (gateway.read_batches),
    until a field needs a SQLAlchemy connection; after that, and on SQLite, statements run one
    after another on the request's single connection. On SQLite, a plan whose reads are all
    point reads by key (`on_loop`) reads in one snapshot on the loop itself
    (gateway.local_reads) instead.
    """

    __slots__ = (
        "_broken",
        "_connection",
        "_driver",
        "_lent",
        "_local",
        "_opened",
        "_snapshot",
        "catalog",
        "context",
        "grants",
        "now",
        "users",
    )

    def __init__(self, context: Context, *, on_loop: bool = False) -> None:
        self.context = context
        self.catalog = context.catalog
        self.now: datetime = context.clock()
        self.users: dict[int, Any] = {}
        self.grants: dict[int, list[Any]] = {}
        self._opened: AbstractAsyncContextManager[AsyncConnection] | None = None
        self._connection: AsyncConnection | None = None
        # Reads on the driver itself: where the engine's events go, and the driver's connection.
        self._driver: tuple[Connection | Engine, Any] | None = None
        # A connection lent past SQLAlchemy (a plan that only reads on the driver, the viewer's).
        self._lent: LentConnection | None = None
        self._broken = False
        # Whether to read on SQLite's local reads: not begun yet (True), begun (`_snapshot`).
        self._local = on_loop
        self._snapshot: Snapshot | None = None

    async def connection(self) -> AsyncConnection:
        if self._snapshot is not None:
            # Unreachable for a compiled plan (a field that reads through SQLAlchemy clears
            # Operation.reads_on_loop); a new caller would otherwise read in two snapshots.
            raise AssertionError("a plan read on the loop asked for a SQLAlchemy connection")
        self._local = False
        if self._connection is None:
            if self._lent is not None:
                # One connection per request: holding two would let a full pool deadlock.
                lent, self._lent, self._driver = self._lent, None, None
                await lent.release()
            self._opened = self.context.db.connect()
            self._connection = await self._opened.__aenter__()
        return self._connection

    async def driver(self) -> tuple[Connection | Engine, Any]:
        """Where statements' events go, and the driver's own connection (asyncpg, aiosqlite)."""
        if self._driver is None:
            if self._connection is not None:
                raw = await self._connection.get_raw_connection()
                self._driver = (self._connection.sync_connection, raw.driver_connection)
            else:
                # gateway.db's Database and ReplicaReads lend; schema's UnitOfWork does not say so.
                self._lent = await cast(Database, self.context.db).lend_driver()
                self._driver = (self._lent.events, self._lent.driver)
        return self._driver

    async def close(self) -> None:
        self._driver = None
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            snapshot.end(broken=self._broken)
        if self._lent is not None:
            lent, self._lent = self._lent, None
            await lent.release(broken=self._broken)
        if self._opened is not None:
            opened, self._opened, self._connection = self._opened, None, None
            await opened.__aexit__(None, None, None)

    async def fetch(self, read: DriverRead, keys: Sequence[int], **named: Any) -> list[Any]:
        """The rows of a driver-level read (gateway.compiled.driver) for `keys`."""
        if self._local:
            snapshot = self._snapshot or self._begin_local()
            if snapshot is not None:
                try:
                    return read.fetch_local(snapshot, keys, **named)
                except BaseException:
                    self._broken = True
                    raise
        if self._connection is None:
            # gateway.db's Database and ReplicaReads join reads; schema's UnitOfWork does not.
            batches: ReadBatches | None = getattr(self.context.db, "read_batches", None)
            if batches is not None:
                return await batches.fetch(read, keys, named)
        events, driver = await self.driver()
        try:
            return await read.fetch(events, driver, keys, **named)
        except BaseException:
            # Failed or cancelled mid-statement: the connection's state is unknown.
            self._broken = True
            raise

    def _begin_local(self) -> Snapshot | None:
        """This request's snapshot on SQLite's local reads, or None: read on the pool.

        A file SQLite cannot read now raises sqlite3.Error: graphql-core answers instead.
        """
        # gateway.db's Database and ReplicaReads have local reads; schema's UnitOfWork does not.
        reads: LocalReads | None = getattr(self.context.db, "local_reads", None)
        snapshot = reads.begin() if reads is not None else None
        if snapshot is None:
            self._local = False
        self._snapshot = snapshot
        return snapshot

    async def users_by_id(self, ids: Sequence[int]) -> list[Any]:
        """Users by id, each read once per request, the missing ones in one statement."""
        missing = list(dict.fromkeys(i for i in ids if i not in self.users))
        if missing:
            found = {row.id: row for row in await self.fetch(USERS_BY_ID, missing)}
            rows = [found.get(i) for i in missing]
            self.users.update(zip(missing, rows, strict=True))
        return [self.users[i] for i in ids]

    async def open_grants(self, user_ids: Sequence[int]) -> list[list[Any]]:
        """Each user's grants with credits left (expired ones too), soonest expiry first."""
        missing = list(dict.fromkeys(i for i in user_ids if i not in self.grants))
        if missing:
            by_user: dict[int, list[Any]] = {i: [] for i in missing}
            for grant in await self.fetch(OPEN_GRANTS, missing):
                by_user[grant.user_id].append(grant)
            found = [by_user[i] for i in missing]
            self.grants.update(zip(missing, found, strict=True))
        return [self.grants[i] for i in user_ids]

    def remember_users(self, rows: Sequence[Any]) -> None:
        for row in rows:
            self.users[row.id] = row
