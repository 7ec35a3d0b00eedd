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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# session.info key: the unit of work commits more with this change, so nothing may commit alone.
ONE_TRANSACTION = "one_transaction"
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


def runs_in_database(session: AsyncSession) -> bool:
    """Whether the session's database has the one-statement functions (PostgreSQL)."""
    bind = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


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
        return await _run_outside_transaction(conn, driver, one, parameters)
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


async def _run_outside_transaction(
    conn: AsyncConnection, driver: asyncpg.Connection, one: OneStatement, parameters: dict[str, Any]
) -> dict[str, Any]:
    """The function's row, by asyncpg in autocommit; the engine's statement events still fire."""
    arguments = tuple(parameters[name] for name in one.parameters)
    sync = conn.sync_connection
    dispatch = sync.dispatch
    context = SimpleNamespace()  # where a listener may keep state between its two events
    dispatch.before_cursor_execute(sync, None, one.sql, arguments, context, False)
    record = await driver.fetchrow(one.sql, *arguments)
    dispatch.after_cursor_execute(sync, None, one.sql, arguments, context, False)
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
