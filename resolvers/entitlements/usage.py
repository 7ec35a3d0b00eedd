"""Recording usage of a limited feature: checked against the limit and counted in one step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.entitlements.access import Entitlement, entitlement_of, period_of
from resolvers.errors import (
    IdempotencyConflict,
    InvalidInput,
    LimitExceeded,
    NoAccess,
    UnknownFeature,
    UserNotFound,
)
from resolvers.ledger.changes import record_change
from resolvers.ledger.entries import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    RESERVED_KEY_PREFIXES,
    Actor,
    fingerprint,
)
from resolvers.models import CreditEvent, EntitlementOverride, TierChange, UsageEvent, User
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
    # read from it is the one this transaction writes back (SQLite: BEGIN IMMEDIATE does it).
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
    period, _ = period_of(catalog, feature, row, now)
    used = max(before.usage + quantity, 0)
    # A new dict, not an edit in place: the ORM sees a JSON column change only on assignment.
    row.entitlement_usage = {
        **(row.entitlement_usage or {}),
        feature: {"period": period, "used": used},
    }
    row.updated_at = now
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
        limit=before.limit,
        source=actor.source,
        actor=actor.name,
    )
    return UsageRecorded(
        user=row, entitlement=entitlement_of(catalog, row, feature, now), event=event
    )


# Where a key was used before, in one statement: one key names one operation, whichever of
# usage, overrides, credit or tier changes used it first.
_KEY_USES = union_all(
    select(
        EntitlementOverride.id, EntitlementOverride.fingerprint, literal("override").label("kind")
    ).where(EntitlementOverride.idempotency_key == bindparam("key")),
    select(UsageEvent.id, UsageEvent.fingerprint, literal("usage").label("kind")).where(
        UsageEvent.idempotency_key == bindparam("key")
    ),
    select(CreditEvent.id, CreditEvent.fingerprint, literal("credit").label("kind")).where(
        CreditEvent.idempotency_key == bindparam("key")
    ),
    select(TierChange.id, TierChange.fingerprint, literal("tier").label("kind")).where(
        TierChange.idempotency_key == bindparam("key")
    ),
)


async def find_key_use(session: AsyncSession, key: str) -> Any:
    """(id, fingerprint, kind) of the row that used `key` first, or None."""
    return (await session.execute(_KEY_USES, {"key": key})).first()


async def _replay(
    session: AsyncSession, row: User, key: str, digest: str, *, catalog: Catalog, now: datetime
) -> UsageRecorded | IdempotencyConflict | None:
    """The first result of a retried call, a conflict, or None for a key not used before."""
    used = await find_key_use(session, key)
    if used is None:
        return None
    if used.kind != "usage" or used.fingerprint != digest:
        return IdempotencyConflict(idempotency_key=key)
    event = await session.get(UsageEvent, used.id)
    assert event is not None, "the row the key lookup found"
    entitlement = entitlement_of(catalog, row, event.feature, now)
    return UsageRecorded(user=row, entitlement=entitlement, event=event, replayed=True)
