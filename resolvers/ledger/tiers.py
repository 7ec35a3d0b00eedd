"""Plan tiers: `set_tier` (support, CLI and Stripe all go through it) and the tier history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import IdempotencyConflict, InvalidInput, UnknownTier, UserNotFound
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.ledger.allowances import refresh_balance
from resolvers.ledger.changes import record_change
from resolvers.ledger.entries import Actor, check_change_args
from resolvers.ledger.idempotency import KeyKind, earlier_use, fingerprint
from resolvers.models import TierChange
from resolvers.prepared import execute
from resolvers.users import UserRef

TIER_CHANGES = TierChange.__table__
_BY_ID = select(TIER_CHANGES).where(TIER_CHANGES.c.id == bindparam("change_id"))
_INSERT = insert(TIER_CHANGES).returning(TIER_CHANGES.c.id)


@dataclass(frozen=True)
class TierMoved:
    """One written (or replayed) tier change: the `tier_changes` row."""

    id: int
    user_id: int
    from_tier: str
    to_tier: str
    reason: str
    source: str
    actor: str
    request_id: str | None
    idempotency_key: str | None
    fingerprint: str | None
    created_at: datetime


@dataclass(frozen=True)
class TierSet:
    user: Account
    change: TierMoved | None  # None: the user already had that tier, nothing was written
    replayed: bool = False


async def set_tier(
    session: AsyncSession,
    *,
    user: UserRef | Account,
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
    row = await lock_account(session, user, idempotency_key=idempotency_key)
    if row is None:
        assert isinstance(user, UserRef)
        return user.not_found()
    digest = fingerprint("set_tier", user=row.id, tier=tier, reason=reason)
    used = earlier_use(row.key_use, key=idempotency_key, kind=KeyKind.TIER, digest=digest)
    if isinstance(used, IdempotencyConflict):
        return used
    if used is not None:
        earlier = TierMoved(**(await execute(session, _BY_ID, {"change_id": used})).one()._mapping)
        unchanged = earlier.from_tier == earlier.to_tier
        return TierSet(user=row, change=None if unchanged else earlier, replayed=True)
    if row.tier == tier:
        if idempotency_key is not None:
            # Nothing changes, but the key is spent: a retry with other arguments must be a
            # conflict, not a change (it could undo somebody else's change made since).
            await _record(session, row, tier, reason, actor, now, idempotency_key, digest)
        await save_account(session, row)  # what the caller changed on the locked row
        return TierSet(user=row, change=None)

    change = await _record(session, row, tier, reason, actor, now, idempotency_key, digest)
    row.tier = tier
    row.updated_at = now
    # The new tier's allowance for this month is due now; its key keeps it to once a month.
    row.allowance_period_start = None
    await refresh_balance(session, row, catalog=catalog, now=now, actor=actor)
    await save_account(session, row)
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


async def _record(
    session: AsyncSession,
    user: Account,
    tier: str,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None,
    digest: str,
) -> TierMoved:
    values = {
        "user_id": user.id,
        "from_tier": user.tier,
        "to_tier": tier,
        "reason": reason,
        **actor.provenance(idempotency_key, digest, now),
    }
    change_id = (await execute(session, _INSERT, values)).scalar_one()
    return TierMoved(id=change_id, **values)
