"""One-statement changes on PostgreSQL: a database function run outside any transaction.

The spend (`spend_credits`, resolvers/ledger/spends.py) and the usage count (`record_usage`,
resolvers/entitlements/counting.py) each do the common case of their Python rule in one call of
a plpgsql function, which answers 'fallback' for anything else; the caller then runs the Python
rule, in a transaction of its own that locks and reads the user again.

When nothing has run in the session's transaction yet, the call goes to asyncpg itself, outside
any transaction: one statement is its own transaction, so the change stays all or nothing, and
the BEGIN and COMMIT round trips (two of the three, and a third of a change's time when
profiled) are not made. A unit of work that writes more after the change (the outbox's events,
which must commit with it) marks its session with ONE_TRANSACTION, and the function then runs
inside the transaction like any statement.

The gateway runs these changes before it opens a session at all (gateway.db.Database.write's
`alone`): on a connection lent past SQLAlchemy, `OnDriver`. The session, its Connection, the
greenlet hops and the unit of work's commit cost more CPU than the statement's own round trip;
a change the function hands back ('fallback', a lost race) then goes to the Python rule in a
transaction, which is told (TRIED_ALONE) not to call the function a second time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from types import SimpleNamespace
from typing import Any, Protocol

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

# session.info key: the unit of work commits more with this change, so nothing may commit alone.
ONE_TRANSACTION = "one_transaction"
# session.info key: the function already answered 'fallback' (or lost a race) before this
# transaction began; the Python rule decides without asking it again.
TRIED_ALONE = "tried_alone"
# A concurrent change took the key first (unique violation), or a deadlock or serialization
# failure: outside a transaction nothing was done, and the Python rule decides afresh.
_LOST_RACE = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@dataclass(frozen=True)
class OneStatement:
    """A function call, as SQLAlchemy runs it in a transaction and as asyncpg runs it alone."""

    statement: TextClause
    sql: str  # compiled once for asyncpg
    parameters: tuple[str, ...]  # the statement's parameters in asyncpg's order
    times: tuple[str, ...]  # result columns read as aware UTC times, as UTCDateTime reads them
    json_columns: tuple[str, ...]  # result columns of type json

    @classmethod
    def of(
        cls, statement: TextClause, *, times: tuple[str, ...], json_columns: tuple[str, ...]
    ) -> OneStatement:
        compiled = statement.compile(dialect=asyncpg_dialect())
        return cls(
            statement=statement,
            sql=str(compiled),
            parameters=tuple(compiled.positiontup or ()),
            times=times,
            json_columns=json_columns,
        )


class Statements(Protocol):
    """Where a one-statement change runs, and where its `entitlement_change` lines queue."""

    @property
    def info(self) -> dict[Any, Any]: ...

    async def run(self, one: OneStatement, parameters: dict[str, Any]) -> Mapping[str, Any] | None:
        """The function's one row; None: it lost a race outside a transaction, changed nothing."""
        ...


class InSession:
    """The change in a unit of work's session: alone when nothing ran in it yet, else inside."""

    __slots__ = ("session",)

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def info(self) -> dict[Any, Any]:
        return self.session.info

    async def run(self, one: OneStatement, parameters: dict[str, Any]) -> Mapping[str, Any] | None:
        return await run_one_statement(self.session, one, parameters)


class OnDriver:
    """The change alone on a lent asyncpg connection (gateway.driver_pool): no session.

    `events` is the engine whose statement events fire (statement counts, tracing); `broken`
    says the connection may not be lent again (a failure SQLAlchemy did not see).
    """

    __slots__ = ("broken", "driver", "events", "info")

    def __init__(self, driver: asyncpg.Connection, events: Any) -> None:
        self.driver = driver
        self.events = events
        self.info: dict[Any, Any] = {}
        self.broken = False

    async def run(self, one: OneStatement, parameters: dict[str, Any]) -> Mapping[str, Any] | None:
        driver = self.driver
        try:
            return await _fetch_alone(self.events, driver, one, parameters)
        except _LOST_RACE:
            return None
        except BaseException as exc:
            if not driver.is_closed() and isinstance(exc, asyncpg.PostgresError):
                raise
            self.broken = True
            if not isinstance(exc, Exception):
                raise
            raise OperationalError(one.sql, None, exc, connection_invalidated=True) from exc


def runs_in_database(session: AsyncSession) -> bool:
    """Whether the session's database has the one-statement functions (PostgreSQL), and they
    were not already asked about this change before its transaction began."""
    bind = session.bind
    return (
        bind is not None and bind.dialect.name == "postgresql" and not session.info.get(TRIED_ALONE)
    )


async def run_one_statement(
    session: AsyncSession, one: OneStatement, parameters: dict[str, Any]
) -> Mapping[str, Any] | None:
    """The function's one row; None: it lost a race outside a transaction and changed nothing."""
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    alone = not session.info.get(ONE_TRANSACTION)
    if not (alone and isinstance(driver, asyncpg.Connection) and not driver.is_in_transaction()):
        return (await conn.execute(one.statement, parameters)).one()._mapping
    try:
        return await _fetch_alone(conn.sync_connection, driver, one, parameters)
    except _LOST_RACE:
        return None
    except BaseException as exc:
        if not driver.is_closed() and isinstance(exc, asyncpg.PostgresError):
            raise
        # SQLAlchemy did not see this failure: its pool must not lend the connection again,
        # and the caller hears of it as from SQLAlchemy (the database went away).
        await conn.invalidate()
        if not isinstance(exc, Exception):
            raise
        raise OperationalError(one.sql, None, exc, connection_invalidated=True) from exc


async def _fetch_alone(
    events: Any, driver: asyncpg.Connection, one: OneStatement, parameters: dict[str, Any]
) -> dict[str, Any]:
    """The function's row, by asyncpg in autocommit; the statement events fire on `events`
    (a SQLAlchemy Connection, or the Engine for a lent connection)."""
    arguments = tuple(parameters[name] for name in one.parameters)
    dispatch = events.dispatch
    context = SimpleNamespace()  # where a listener may keep state between its two events
    dispatch.before_cursor_execute(events, None, one.sql, arguments, context, False)
    record = await driver.fetchrow(one.sql, *arguments)
    dispatch.after_cursor_execute(events, None, one.sql, arguments, context, False)
    assert record is not None, "a one-statement change answers one row"
    row = dict(record)
    for name in one.times:
        if (value := row[name]) is not None:
            row[name] = value.astimezone(UTC)
    for name in one.json_columns:
        if isinstance(
            value := row[name], str
        ):  # asyncpg's own codec, where SQLAlchemy's is not set
            row[name] = json.loads(value)
    return row
