"""A spend in one round trip on PostgreSQL: the ledger's spend rule as the `spend_credits` function.

The function (migration 0002; since 0010 it locks the key before the user row, as
resolvers/ledger/idempotency.py:lock_key does) handles the common case of consume_credits; it
answers 'fallback' for anything else (a used key, an expiry, a due allowance) and the caller runs
the Python rule. tests/resolvers/test_spend_differential.py holds the two to identical results and
ledgers. How the call runs (alone, outside a transaction, when it can): resolvers.ledger.statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, bindparam, text

from resolvers.errors import InsufficientCredits, UserNotFound
from resolvers.ledger.accounts import Account
from resolvers.ledger.allowances import allowance_period
from resolvers.ledger.changes import record_change
from resolvers.ledger.entries import Actor, LedgerEvent
from resolvers.ledger.statements import OneStatement, Statements
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

_SPEND_CALL = OneStatement.of(
    _SPEND, times=tuple(f"u_{name}" for name in _TIMES), json_columns=("o_allocations",)
)


async def spend_in_database(
    statements: Statements,
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
    row = await statements.run(_SPEND_CALL, parameters)
    if row is None:
        return None
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
        statements,
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
