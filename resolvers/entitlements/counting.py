"""Usage counted in one round trip on PostgreSQL: the usage rule as the `record_usage` function.

The function (migration 0009; since 0010 it locks the key before the user row, as
resolvers/ledger/idempotency.py:lock_key does) handles the common case of
resolvers/entitlements/usage.py:record_usage; it answers 'fallback' for anything else (a used
key, an override of the feature, a tier the catalog does not name) and the caller runs the
Python rule.
tests/resolvers/test_usage_differential.py holds the two to identical results and usage records.
How the call runs (alone, outside a transaction, when it can): resolvers.ledger.statements.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, Integer, String, bindparam, text

from resolvers.catalog.model import Catalog
from resolvers.errors import LimitExceeded, NoAccess, UserNotFound
from resolvers.kinds import SubscriptionStatus, is_paying
from resolvers.ledger.allowances import allowance_period
from resolvers.ledger.changes import Queue, record_change
from resolvers.ledger.entries import Actor
from resolvers.ledger.statements import OneStatement, Statements
from resolvers.models import UsageEvent, User, UTCDateTime

_TIME = UTCDateTime()


class CountedUser(NamedTuple):
    """The user row as the function answers it, read by name as a row is: building the ORM
    object for it cost more than the rest of the count's Python (profiled under recordUsage)."""

    id: int
    email: str
    external_id: str | None
    locale: str | None
    tier: str
    trial_ends_at: datetime | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    subscription_status: str | None
    subscription_price_id: str | None
    subscription_period_end: datetime | None
    subscription_event_at: datetime | None
    credits_available: int
    credits_next_expiry: datetime | None
    allowance_period_start: datetime | None
    entitlement_usage: dict[str, Any] | None
    entitlement_overrides: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    credits_held: int
    holds_next_expiry: datetime | None


# The columns the function answers (not the table's: a column added later is not among them).
_USER_COLUMNS = CountedUser._fields
_ANSWERED = tuple(f"u_{name}" for name in _USER_COLUMNS)
_TIMES = tuple(
    name for name in _USER_COLUMNS if name.endswith(("_at", "_end", "_expiry", "_start"))
)
_JSON = ("entitlement_usage", "entitlement_overrides")
_RECORD = (
    text(
        "SELECT * FROM record_usage(:user_id, :feature, :quantity, :rules, :source, :actor,"
        " :request_id, :key, :fingerprint, :now, :month_start)"
    )
    .bindparams(
        bindparam("user_id", type_=Integer),
        bindparam("quantity", type_=Integer),
        bindparam("key", type_=String),
        bindparam("request_id", type_=String),
        bindparam("now", type_=_TIME),
        bindparam("month_start", type_=_TIME),
    )
    .columns(
        **{f"u_{name}": _TIME for name in _TIMES},
        **{f"u_{name}": JSON for name in _JSON},
    )
)
_RECORD_CALL = OneStatement.of(
    _RECORD,
    times=tuple(f"u_{name}" for name in _TIMES),
    json_columns=tuple(f"u_{name}" for name in _JSON),
)
_PAYING = sorted(status.value for status in SubscriptionStatus if is_paying(status))
# (catalog, feature) -> the function's p_rules; a process has one catalog, tests a few.
_RULES: dict[tuple[int, str], tuple[Catalog, str]] = {}


def rules_of(catalog: Catalog, feature: str) -> str:
    """What the function needs of the catalog for `feature`: per tier [has_access, limit],
    whether usage resets each period, and the subscription statuses Stripe bills."""
    cached = _RULES.get((id(catalog), feature))
    if cached is not None and cached[0] is catalog:
        return cached[1]
    tiers = {}
    for tier in catalog.tiers:
        rule = tier.entitlements.get(feature)
        has_access = rule is not None and rule.has_access
        tiers[tier.code] = [has_access, rule.limit if rule is not None and has_access else None]
    metered = catalog.usage_period(feature) is not None
    rules = json.dumps({"metered": metered, "paying": _PAYING, "tiers": tiers})
    if len(_RULES) > 256:
        _RULES.clear()
    _RULES[(id(catalog), feature)] = (catalog, rules)
    return rules


async def count_in_database(
    statements: Statements,
    *,
    user_id: int,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None,
    digest: str,
) -> tuple[CountedUser, UsageEvent] | LimitExceeded | NoAccess | UserNotFound | None:
    """The count, done by one statement: the user and the usage record as they stand after it;
    None: not the common case, run the Python rule."""
    parameters = {
        "user_id": user_id,
        "feature": feature,
        "quantity": quantity,
        "rules": rules_of(catalog, feature),
        "source": actor.source,
        "actor": actor.name,
        "request_id": actor.request_id,
        "key": idempotency_key,
        "fingerprint": digest,
        "now": now,
        "month_start": allowance_period(now)[0],
    }
    row = await statements.run(_RECORD_CALL, parameters)
    if row is None:
        return None
    outcome = row["o_outcome"]
    if outcome == "fallback":
        return None
    if outcome == "not_found":
        return UserNotFound(user_id=user_id)
    if outcome == "no_access":
        return NoAccess(feature=feature)
    limit, usage = row["o_limit"], row["o_usage"]
    if outcome == "limit_exceeded":
        return LimitExceeded(feature=feature, limit=limit, usage=usage, requested=quantity)
    assert outcome == "recorded", outcome
    user = CountedUser._make([row[name] for name in _ANSWERED])
    used = user.entitlement_usage[feature]["used"]
    event = UsageEvent(
        id=row["o_event_id"],
        user_id=user.id,
        feature=feature,
        period=user.entitlement_usage[feature]["period"],
        quantity=used - usage,
        used_after=used,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        created_at=now,
    )
    record_usage_change(statements, user=user, event=event, limit=limit, actor=actor)
    return user, event


def record_usage_change(
    session: Queue, *, user: User | CountedUser, event: UsageEvent, limit: int | None, actor: Actor
) -> None:
    """The one `entitlement_change` line of a count, whichever path made it."""
    record_change(
        session,
        action="usage_recorded",
        request_id=actor.request_id,
        user_id=user.id,
        email=user.email,
        feature=event.feature,
        quantity=event.quantity,
        usage_after=event.used_after,
        limit=limit,
        source=actor.source,
        actor=actor.name,
    )
