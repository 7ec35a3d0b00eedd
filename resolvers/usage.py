"""Recording usage of a limited feature: checked against the limit and counted in one step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog import Catalog
from resolvers.changes import record_change
from resolvers.entitlements import (
    Entitlement,
    entitlement_of,
    entitlement_states,
    period_of,
)
from resolvers.errors import (
    IdempotencyConflict,
    InvalidInput,
    LimitExceeded,
    NoAccess,
    UnknownFeature,
    UserNotFound,
)
from resolvers.ledger import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    RESERVED_KEY_PREFIXES,
    Actor,
    find_keyed_event,
    fingerprint,
)
from resolvers.models import FeatureUsage, UsageEvent, User
from resolvers.users import UserRef, find_user

MAX_QUANTITY = 1_000_000


@dataclass(frozen=True)
class UsageRecorded:
    user: User
    entitlement: Entitlement  # as it stands after this usage
    event: UsageEvent
    replayed: bool = False


def check_feature(catalog: Catalog, feature: str) -> UnknownFeature | None:
    if feature not in catalog.features:
        return UnknownFeature(feature=feature[:64], known=tuple(catalog.features))
    return None


def check_idempotency_key(key: str | None, actor: Actor) -> InvalidInput | None:
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return InvalidInput(
            field="idempotencyKey", reason=f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    if key.startswith(RESERVED_KEY_PREFIXES) and actor.source != "system":
        return InvalidInput(
            field="idempotencyKey",
            reason=f"keys starting with {' or '.join(RESERVED_KEY_PREFIXES)} are the gateway's own",
        )
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
    gives usage back (never below zero). The same key counts once."""
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity == 0:
        return InvalidInput(field="quantity", reason="must be a whole number other than 0")
    if abs(quantity) > MAX_QUANTITY:
        return InvalidInput(field="quantity", reason=f"must be at most {MAX_QUANTITY:,} either way")
    if failure := check_idempotency_key(idempotency_key, actor) or check_feature(catalog, feature):
        return failure
    # The user row's lock makes concurrent checks of one user's limits take turns: the count
    # read below is the one this transaction writes over (SQLite: BEGIN IMMEDIATE does it).
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint("usage", user=row.id, feature=feature, quantity=quantity)
    if idempotency_key is not None:
        replay = await _replay(session, row, idempotency_key, digest, catalog=catalog, now=now)
        if replay is not None:
            return replay
    state = (await entitlement_states(session, [row.id], now=now))[0]
    before = entitlement_of(catalog, row, feature, state, now)
    if quantity > 0:
        if not before.has_access:
            return NoAccess(feature=feature)
        if before.limit is not None and before.usage + quantity > before.limit:
            return LimitExceeded(
                feature=feature, limit=before.limit, usage=before.usage, requested=quantity
            )
    period, _ = period_of(catalog, feature, row, now)
    used = max(before.usage + quantity, 0)
    counted = (
        await session.execute(
            select(FeatureUsage).where(
                FeatureUsage.user_id == row.id,
                FeatureUsage.feature == feature,
                FeatureUsage.period == period,
            )
        )
    ).scalar_one_or_none()
    if counted is None:
        session.add(
            FeatureUsage(user_id=row.id, feature=feature, period=period, used=used, updated_at=now)
        )
    else:
        counted.used = used
        counted.updated_at = now
    event = UsageEvent(
        user_id=row.id,
        feature=feature,
        period=period,
        quantity=used - before.usage,
        used_after=used,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        created_at=now,
    )
    session.add(event)
    await session.flush()
    record_change(
        session,
        action="usage_recorded",
        request_id=actor.request_id,
        user_id=row.id,
        email=row.email,
        feature=feature,
        quantity=event.quantity,
        usage_after=used,
        source=actor.source,
        actor=actor.name,
    )
    state.usage[(feature, period)] = used
    return UsageRecorded(
        user=row, entitlement=entitlement_of(catalog, row, feature, state, now), event=event
    )


async def _replay(
    session: AsyncSession, row: User, key: str, digest: str, *, catalog: Catalog, now: datetime
) -> UsageRecorded | IdempotencyConflict | None:
    """The first result of a retried call, a conflict, or None for a key not used before."""
    event = (
        await session.execute(select(UsageEvent).where(UsageEvent.idempotency_key == key))
    ).scalar_one_or_none()
    if event is not None:
        if event.fingerprint != digest:
            return IdempotencyConflict(idempotency_key=key)
        state = (await entitlement_states(session, [row.id], now=now))[0]
        entitlement = entitlement_of(catalog, row, event.feature, state, now)
        return UsageRecorded(user=row, entitlement=entitlement, event=event, replayed=True)
    # One key names one operation: a key a credit or tier change used is taken.
    if await find_keyed_event(session, key, digest) is not None:
        return IdempotencyConflict(idempotency_key=key)
    return None
