"""A spend in one round trip on PostgreSQL: the ledger's spend rule as the `spend_credits` function.

The function (migration 0002) handles the common case of consume_credits; it answers
'fallback' for anything else (a used key, an expiry, a due allowance) and the caller runs the
Python rule. tests/resolvers/test_spend_differential.py holds the two to identical results and
ledgers.

When nothing has run in the session's transaction yet, the statement goes to asyncpg itself,
outside any transaction: one statement is its own transaction, so the spend stays all or nothing,
and the BEGIN and COMMIT round trips (two of the three, and a third of a spend's time when
profiled) are not made. A 'fallback' has changed nothing; the Python rule then runs in a
transaction of its own, which locks and reads the user again. A unit of work that writes more
after the change (the outbox's events, which must commit with it) marks its session with
ONE_TRANSACTION, and the spend then runs inside the transaction like any statement.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import JSON, Integer, String, bindparam, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolvers.errors import InsufficientCredits, UserNotFound
from resolvers.ledger.accounts import Account
from resolvers.ledger.allowances import allowance_period
from resolvers.ledger.changes import record_change
from resolvers.ledger.entries import Actor, LedgerEvent
from resolvers.models import UTCDateTime

_TIME = UTCDateTime()
_USER_COLUMNS = (
    "id",
    "email",
    "external_id",
    "locale",
    "tier",
    "trial_ends_at",
    "stripe_customer_id",
    "stripe_subscription_id",
    "subscription_status",
    "subscription_price_id",
    "subscription_period_end",
    "subscription_event_at",
    "credits_available",
    "credits_next_expiry",
    "allowance_period_start",
    "created_at",
    "updated_at",
    "credits_held",
    "holds_next_expiry",
)
_TIMES = {name for name in _USER_COLUMNS if name.endswith(("_at", "_end", "_expiry", "_start"))}
_SPEND = (
    text(
        "SELECT * FROM spend_credits(:user_id, :amount, :reason, :source, :actor, :request_id,"
        " :key, :fingerprint, :now, :period_start)"
    )
    .bindparams(
        bindparam("user_id", type_=Integer),
        bindparam("amount", type_=Integer),
        bindparam("key", type_=String),
        bindparam("request_id", type_=String),
        bindparam("now", type_=_TIME),
        bindparam("period_start", type_=_TIME),
    )
    .columns(
        o_allocations=JSON,
        **{f"u_{name}": _TIME for name in _TIMES},
    )
)


# The statement as asyncpg runs it, compiled once; the parameters in _SPEND's order.
_SPEND_SQL = str(_SPEND.compile(dialect=asyncpg_dialect()))
_SPEND_PARAMETERS = tuple(_SPEND.compile(dialect=asyncpg_dialect()).positiontup or ())
# A concurrent spend took the key first (unique violation), or a deadlock or serialization
# failure: outside a transaction nothing was done, and the Python rule decides afresh.
_LOST_RACE = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


# session.info key: the unit of work commits more with this change, so nothing may commit alone.
ONE_TRANSACTION = "one_transaction"


def can_spend_in_database(session: AsyncSession) -> bool:
    bind = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


async def spend_in_database(
    session: AsyncSession,
    *,
    user_id: int,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None,
    digest: str,
) -> tuple[Account, LedgerEvent] | InsufficientCredits | UserNotFound | None:
    """The spend, done by one statement; None: not the common case, run the Python rule."""
    parameters = {
        "user_id": user_id,
        "amount": amount,
        "reason": reason,
        "source": actor.source,
        "actor": actor.name,
        "request_id": actor.request_id,
        "key": idempotency_key,
        "fingerprint": digest,
        "now": now,
        "period_start": allowance_period(now)[0],
    }
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    row: Any
    alone = not session.info.get(ONE_TRANSACTION)
    if alone and isinstance(driver, asyncpg.Connection) and not driver.is_in_transaction():
        try:
            row = await _spend_outside_transaction(conn, driver, parameters)
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
            raise OperationalError(_SPEND_SQL, None, exc, connection_invalidated=True) from exc
    else:
        row = (await conn.execute(_SPEND, parameters)).one()._mapping
    outcome = row["o_outcome"]
    if outcome == "not_found":
        return UserNotFound(user_id=user_id)
    if outcome == "fallback":
        return None
    values: dict[str, Any] = {name: row[f"u_{name}"] for name in _USER_COLUMNS}
    account = Account(**values, _saved=dict(values))
    if outcome == "insufficient":
        return InsufficientCredits(available=account.credits_available, requested=amount)
    event = LedgerEvent(
        id=row["o_event_id"],
        user_id=account.id,
        kind="consume",
        amount=-amount,
        balance_after=account.credits_available + account.credits_held,
        reason=reason,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        grant_id=None,
        payment_id=None,
        allocations=row["o_allocations"],
        created_at=now,
        hold_id=None,
    )
    record_change(
        session,
        action="credits_consumed",
        request_id=actor.request_id,
        user_id=account.id,
        email=account.email,
        kind="consume",
        amount=-amount,
        balance_after=account.credits_available + account.credits_held,
        held=account.credits_held,
        hold_id=None,
        reason=reason,
        source=actor.source,
        actor=actor.name,
    )
    return account, event


async def _spend_outside_transaction(
    conn: AsyncConnection, driver: asyncpg.Connection, parameters: dict[str, Any]
) -> dict[str, Any]:
    """The spend's row, by asyncpg in autocommit; the engine's statement events still fire."""
    arguments = tuple(parameters[name] for name in _SPEND_PARAMETERS)
    sync = conn.sync_connection
    dispatch = sync.dispatch
    context = SimpleNamespace()  # where a listener may keep state between its two events
    dispatch.before_cursor_execute(sync, None, _SPEND_SQL, arguments, context, False)
    record = await driver.fetchrow(_SPEND_SQL, *arguments)
    dispatch.after_cursor_execute(sync, None, _SPEND_SQL, arguments, context, False)
    assert record is not None, "spend_credits answers one row"
    row = dict(record)
    for name in _TIMES:
        # As UTCDateTime reads them: aware, in UTC.
        if (value := row[f"u_{name}"]) is not None:
            row[f"u_{name}"] = value.astimezone(UTC)
    allocations = row["o_allocations"]
    if isinstance(allocations, str):  # asyncpg's own json codec, where SQLAlchemy's is not set
        row["o_allocations"] = json.loads(allocations)
    return row
