"""Plan tiers: `set_tier` (support, CLI and Stripe all go through it) and the tier history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.allowances import grant_plan_allowance
from resolvers.catalog import Catalog
from resolvers.changes import record_change
from resolvers.errors import IdempotencyConflict, InvalidInput, UnknownTier, UserNotFound
from resolvers.ledger import Actor, check_change_args, expire_credits, fingerprint
from resolvers.models import CreditEvent, TierChange, User
from resolvers.users import UserRef, find_user


@dataclass(frozen=True)
class TierSet:
    user: User
    change: TierChange | None  # None: the user already had that tier, nothing was written
    replayed: bool = False


async def set_tier(
    session: AsyncSession,
    *,
    user: UserRef,
    tier: str,
    reason: str,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None = None,
    action: str = "tier_set",
) -> TierSet | UserNotFound | UnknownTier | InvalidInput | IdempotencyConflict:
    """Move the user to `tier`, record it in the history, and grant the new tier's allowance."""
    if failure := check_change_args(reason=reason, actor=actor, idempotency_key=idempotency_key):
        return failure
    if catalog.tier(tier) is None:
        return UnknownTier(tier=tier, known=catalog.tier_codes)
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint("set_tier", user=row.id, tier=tier, reason=reason)
    if idempotency_key is not None:
        earlier = (
            await session.execute(
                select(TierChange).where(TierChange.idempotency_key == idempotency_key)
            )
        ).scalar_one_or_none()
        if earlier is not None:
            if earlier.fingerprint != digest:
                return IdempotencyConflict(idempotency_key=idempotency_key)
            unchanged = earlier.from_tier == earlier.to_tier
            return TierSet(user=row, change=None if unchanged else earlier, replayed=True)
        # One key, one operation: a key a credit change already used is not free for a tier.
        used = await session.execute(
            select(CreditEvent.id).where(CreditEvent.idempotency_key == idempotency_key)
        )
        if used.first() is not None:
            return IdempotencyConflict(idempotency_key=idempotency_key)
    if row.tier == tier:
        if idempotency_key is not None:
            # Nothing changes, but the key is spent: a retry with other arguments must be a
            # conflict, not a change (it could undo somebody else's change made since).
            session.add(_tier_change(row, tier, reason, actor, now, idempotency_key, digest))
            await session.flush()
        return TierSet(user=row, change=None)

    change = _tier_change(row, tier, reason, actor, now, idempotency_key, digest)
    session.add(change)
    row.tier = tier
    row.updated_at = now
    # The new tier's allowance for this month is due now; its key keeps it to once a month.
    row.allowance_period_start = None
    await expire_credits(session, row, now=now, actor=actor)
    await grant_plan_allowance(session, row, catalog=catalog, now=now, actor=actor)
    await session.flush()
    record_change(
        session,
        action=action,
        request_id=actor.request_id,
        user_id=row.id,
        email=row.email,
        from_tier=change.from_tier,
        to_tier=tier,
        reason=reason,
        source=actor.source,
        actor=actor.name,
    )
    return TierSet(user=row, change=change)


def _tier_change(
    user: User,
    tier: str,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None,
    digest: str,
) -> TierChange:
    return TierChange(
        user_id=user.id,
        from_tier=user.tier,
        to_tier=tier,
        reason=reason,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        created_at=now,
    )


async def tier_history(session: AsyncSession, user_id: int, *, limit: int = 50) -> list[TierChange]:
    """The user's tier changes, newest first."""
    stmt = (
        select(TierChange)
        .where(TierChange.user_id == user_id)
        .order_by(TierChange.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())
