"""Recording usage of a limited feature: checked against the limit and counted in one step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.entitlements.access import Entitlement, counting_period, entitlement_of
from resolvers.entitlements.counting import CountedUser, count_in_database, record_usage_change
from resolvers.errors import (
    IdempotencyConflict,
    InvalidInput,
    LimitExceeded,
    NoAccess,
    UnknownFeature,
    UserNotFound,
)
from resolvers.ledger.entries import Actor
from resolvers.ledger.idempotency import (
    KeyKind,
    check_key,
    earlier_use,
    find_key_use,
    fingerprint,
    lock_key,
)
from resolvers.ledger.statements import InSession, Statements, runs_in_database
from resolvers.models import UsageEvent, User
from resolvers.prepared import execute
from resolvers.users import UserRef, find_user

MAX_QUANTITY = 1_000_000


@dataclass(frozen=True)
class UsageRecorded:
    user: User | CountedUser  # the row as the one-statement count answers it
    entitlement: Entitlement  # as it stands after this usage
    event: UsageEvent
    replayed: bool = False


def check_feature(catalog: Catalog, feature: str) -> UnknownFeature | None:
    if feature not in catalog.features:
        return UnknownFeature(feature=feature[:64], known=tuple(catalog.features))
    return None


async def record_usage(
    session: AsyncSession,
    *,
    user: UserRef,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None = None,
) -> (
    UsageRecorded
    | LimitExceeded
    | NoAccess
    | UnknownFeature
    | UserNotFound
    | InvalidInput
    | IdempotencyConflict
):
    """Count `quantity` uses of `feature` if the limit allows all of them; a negative quantity
    gives usage back (never below zero). The same key counts once.

    On PostgreSQL the common case of a user named by id is one statement (`count_in_database`);
    what it does not handle, and every other database, goes to the Python rule.
    """
    if failure := _check_arguments(feature, quantity, actor, catalog, idempotency_key):
        return failure
    if runs_in_database(session):
        counted = await _count_in_one_statement(
            InSession(session), user, feature, quantity, actor, now, catalog, idempotency_key
        )
        if counted is not None:
            return counted
    return await _count_by_rule(
        session,
        user=user,
        feature=feature,
        quantity=quantity,
        actor=actor,
        now=now,
        catalog=catalog,
        idempotency_key=idempotency_key,
    )


async def record_usage_alone(
    statements: Statements,
    *,
    user: UserRef,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None = None,
) -> UsageRecorded | LimitExceeded | NoAccess | UnknownFeature | UserNotFound | InvalidInput | None:
    """record_usage as one statement before any transaction (PostgreSQL): its answer, or None
    when only the Python rule can give it (a user named by email, a used key, 'fallback')."""
    if failure := _check_arguments(feature, quantity, actor, catalog, idempotency_key):
        return failure
    return await _count_in_one_statement(
        statements, user, feature, quantity, actor, now, catalog, idempotency_key
    )


async def _count_in_one_statement(
    statements: Statements,
    user: UserRef,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None,
) -> UsageRecorded | LimitExceeded | NoAccess | UserNotFound | None:
    """The count by the `record_usage` function (PostgreSQL), in a session or alone; None: the
    Python rule decides (a user named by email, a used key, the function's 'fallback')."""
    if user.user_id is None:
        return None
    counted = await count_in_database(
        statements,
        user_id=user.user_id,
        feature=feature,
        quantity=quantity,
        actor=actor,
        now=now,
        catalog=catalog,
        idempotency_key=idempotency_key,
        digest=fingerprint("usage", user=user.user_id, feature=feature, quantity=quantity),
    )
    if isinstance(counted, tuple):
        row, event = counted
        return UsageRecorded(
            user=row, entitlement=entitlement_of(catalog, row, feature, now), event=event
        )
    return counted


async def record_usage_by_rule(
    session: AsyncSession,
    *,
    user: UserRef,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None = None,
) -> (
    UsageRecorded
    | LimitExceeded
    | NoAccess
    | UnknownFeature
    | UserNotFound
    | InvalidInput
    | IdempotencyConflict
):
    """record_usage by the Python rule alone, on any database: what the one-statement count on
    PostgreSQL is held to (tests/resolvers/test_usage_differential.py)."""
    if failure := _check_arguments(feature, quantity, actor, catalog, idempotency_key):
        return failure
    return await _count_by_rule(
        session,
        user=user,
        feature=feature,
        quantity=quantity,
        actor=actor,
        now=now,
        catalog=catalog,
        idempotency_key=idempotency_key,
    )


def _check_arguments(
    feature: str, quantity: int, actor: Actor, catalog: Catalog, idempotency_key: str | None
) -> InvalidInput | UnknownFeature | None:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity == 0:
        return InvalidInput(field="quantity", reason="must be a whole number other than 0")
    if abs(quantity) > MAX_QUANTITY:
        return InvalidInput(field="quantity", reason=f"must be at most {MAX_QUANTITY:,} either way")
    return check_key(idempotency_key, actor.source) or check_feature(catalog, feature)


async def _count_by_rule(
    session: AsyncSession,
    *,
    user: UserRef,
    feature: str,
    quantity: int,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None,
) -> UsageRecorded | LimitExceeded | NoAccess | UserNotFound | IdempotencyConflict:
    # The user row's lock makes concurrent checks of one user's limits take turns: the count
    # read from it is the one this transaction writes back (SQLite: BEGIN IMMEDIATE does it).
    await lock_key(session, idempotency_key)  # the key's lock first, then the row's
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint("usage", user=row.id, feature=feature, quantity=quantity)
    if idempotency_key is not None:
        replay = await _replay(session, row, idempotency_key, digest, catalog=catalog, now=now)
        if replay is not None:
            return replay
    before = entitlement_of(catalog, row, feature, now)
    if quantity > 0:
        if not before.has_access:
            return NoAccess(feature=feature)
        if before.limit is not None and before.usage + quantity > before.limit:
            return LimitExceeded(
                feature=feature, limit=before.limit, usage=before.usage, requested=quantity
            )
    # The period `before` was counted in: a newer one stored by a process ahead of us is kept.
    period, _ = counting_period(catalog, feature, row, now)
    used = max(before.usage + quantity, 0)
    # A new dict, not an edit in place: the ORM sees a JSON column change only on assignment.
    row.entitlement_usage = {
        **(row.entitlement_usage or {}),
        feature: {"period": period, "used": used},
    }
    row.updated_at = now
    values = {
        "user_id": row.id,
        "feature": feature,
        "period": period,
        "quantity": used - before.usage,
        "used_after": used,
        **actor.provenance(idempotency_key, digest, now),
    }
    # Core, not the unit of work: one statement (one hop to SQLite's thread), and a detached
    # row for the answer. The user's new count is written by the ORM when the session commits.
    event_id = (await execute(session, _INSERT_EVENT, values)).scalar_one()
    event = UsageEvent(id=event_id, **values)
    record_usage_change(session, user=row, event=event, limit=before.limit, actor=actor)
    return UsageRecorded(
        user=row, entitlement=entitlement_of(catalog, row, feature, now), event=event
    )


async def _replay(
    session: AsyncSession, row: User, key: str, digest: str, *, catalog: Catalog, now: datetime
) -> UsageRecorded | IdempotencyConflict | None:
    """The first result of a retried call, a conflict, or None for a key not used before."""
    used = earlier_use(await find_key_use(session, key), key=key, kind=KeyKind.USAGE, digest=digest)
    if used is None or isinstance(used, IdempotencyConflict):
        return used
    event = await session.get(UsageEvent, used)
    assert event is not None, "the row the key lookup found"
    entitlement = entitlement_of(catalog, row, event.feature, now)
    return UsageRecorded(user=row, entitlement=entitlement, event=event, replayed=True)


_INSERT_EVENT = insert(UsageEvent.__table__).returning(UsageEvent.__table__.c.id)
