"""Connections lent past SQLAlchemy to one-statement work: on PostgreSQL, asyncpg's own.

Profiled under the viewer read, taking a connection from SQLAlchemy's pool and giving it back
(a greenlet hop, the pool's queue, its checkout and checkin events, the reset on return) cost
more than the rest of the request's own code. Connections lent past SQLAlchemy (gateway.db's
`lend_driver`) need none of it: they only ever run autocommit statements, so there is no
transaction to reset, and a free list of asyncpg connections lends one in a few operations.

The pool opens at most `size` connections, lazily, and keeps them; past that, callers wait (at
most `timeout` seconds, then TimeoutError, which gateway.db reads as the database being
unreachable). A broken connection is closed and its place freed for a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.util.concurrency import greenlet_spawn

# As SQLAlchemy's pool_timeout default: how long a request waits for a connection.
POOL_TIMEOUT_SECONDS = 30.0


class Gauges(Protocol):
    """Where the pool reports connections in use and callers waiting (gateway.meter's Meter)."""

    @property
    def in_use(self) -> Any: ...

    @property
    def waiting(self) -> Any: ...


class DriverPool:
    """At most `size` asyncpg connections made by `connect`, lent one at a time."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        size: int,
        gauges: Callable[[], Gauges],
        *,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        assert size >= 1
        self.size = size
        self.timeout = timeout
        self._connect = connect
        self._gauges = gauges
        self._idle: list[Any] = []
        self._opened = 0  # idle, lent, and being opened
        # Callers waiting for a connection, first come first served; each is handed one directly.
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._closed = False

    @property
    def opened(self) -> int:
        return self._opened

    async def acquire(self) -> Any:
        """A connection of the pool's, lent to the caller until `release`."""
        # Like SQLAlchemy's after dispose(): a closed pool opens connections again when asked.
        self._closed = False
        if self._idle:
            connection = self._idle.pop()
        elif self._opened < self.size:
            self._opened += 1
            connection = await self._open()
        else:
            connection = await self._wait()
        self._gauges().in_use.inc()
        return connection

    def release(self, connection: Any, *, broken: bool = False) -> None:
        """Back to the pool; a broken one (a statement failed or was cut off) is closed."""
        self._gauges().in_use.dec()
        if broken or self._closed or connection.is_closed():
            connection.terminate()
            self._opened -= 1
            if not self._closed:
                self._replace()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def close(self) -> None:
        """Closes the idle connections; lent ones are closed when they come back (unless the
        pool was asked for a connection again meanwhile)."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._opened -= len(idle)
        for waiter in self._waiters:
            if not waiter.done():
                # An OSError: callers read it as the database being unreachable (a 503).
                waiter.set_exception(ConnectionError("the connection pool was closed"))
        self._waiters.clear()
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)

    async def _open(self) -> Any:
        """A new connection in a place already counted in `_opened`."""
        try:
            return await self._connect()
        except BaseException:
            self._opened -= 1
            self._replace()
            raise

    def _replace(self) -> None:
        # A place came free: it is the first waiter's (counted now, so that no caller arriving
        # meanwhile takes it), to open a connection of its own in.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._opened += 1
                waiter.set_result(None)
                return

    async def _wait(self) -> Any:
        waiting = self._gauges().waiting
        waiting.inc()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        # A timer on the future itself, not asyncio.wait_for: that wraps the wait in a second
        # future and callbacks, which showed in the profile with every request queueing.
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            connection = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection (or a place) just as the wait was cancelled: pass it on.
                self._pass_on(waiter.result())
            raise
        finally:
            timer.cancel()
            waiting.dec()
        if connection is None:
            return await self._open()
        return connection

    def _pass_on(self, connection: Any) -> None:
        if connection is None:
            self._opened -= 1
            self._replace()
            return
        # Counted in use by nobody: release counts it back out, so count it in first.
        self._gauges().in_use.inc()
        self.release(connection)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no database connection came free in time"))


class LentConnection:
    """A pool connection lent past SQLAlchemy's Connection (Database.lend_driver): a connection
    of lend_driver's own pool when `pool` is given, else one of the engine's pool (`handle`)."""

    __slots__ = ("_handle", "_is_sqlite", "_pool", "driver", "events")

    def __init__(
        self, handle: Any, engine: Engine, is_sqlite: bool, pool: DriverPool | None = None
    ) -> None:
        self._handle = handle
        self._is_sqlite = is_sqlite
        self._pool = pool
        self.driver: Any = handle if pool is not None else handle.driver_connection
        # Statements sent on `driver` fire the engine's events here (statement counts, tracing).
        self.events = engine

    async def release(self, *, broken: bool = False) -> None:
        """Back to the pool; a broken one (a statement failed or was cut off) is replaced."""
        if self._pool is not None:
            self._pool.release(self._handle, broken=broken)
            return
        if broken:
            self._handle.invalidate()
        if self._is_sqlite:
            # aiosqlite's reset on return awaits a ROLLBACK, which needs the greenlet.
            await greenlet_spawn(self._handle.close)
        else:
            # asyncpg's reset has nothing to do outside a transaction: no await, no hop.
            self._handle.close()
