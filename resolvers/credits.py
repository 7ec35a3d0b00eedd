"""The credit ledger: grants, spends, expiry and the monthly plan allowance.

Every write here runs inside the caller's transaction and starts by locking the user row, so the
balance on the row, the grants' remaining amounts and the ledger events move together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog import Catalog
from resolvers.changes import record_change
from resolvers.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    UserNotFound,
)
from resolvers.models import CreditEvent, CreditGrant, User
from resolvers.users import UserRef, find_user

SOURCES = ("support", "stripe", "usage", "plan_allowance", "system")
# Keys the gateway makes for itself (plan allowances, Stripe payments). A caller's key in these
# namespaces would claim the key first and so silently block that allowance or those credits.
RESERVED_KEY_PREFIXES = ("allowance:", "stripe:")
CALLER_SOURCES = ("support", "usage")
MAX_CREDITS_PER_CHANGE = 1_000_000
MAX_REASON_LENGTH = 500
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Subscriptions in these states get their allowance from Stripe invoices, not the calendar.
BILLED_BY_STRIPE = ("active", "trialing", "past_due")
_ACTIONS = {
    "grant": "credits_granted",
    "consume": "credits_consumed",
    "expire": "credits_expired",
    "revoke": "credits_revoked",
}


@dataclass(frozen=True)
class Actor:
    """Who asked for a change, from where, and under which request id."""

    name: str
    source: str
    request_id: str | None = None


@dataclass(frozen=True)
class CreditChanged:
    user: User
    event: CreditEvent
    replayed: bool = False


@dataclass(frozen=True)
class PlanMetadata:
    """What the runbook's `ensure_plan_metadata(user)` snippet prints."""

    tier: str
    stripe_customer: str | None
    ai_credits: int
    credit_events: list[dict[str, Any]]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "stripe_customer": self.stripe_customer,
            "ai_credits": self.ai_credits,
            "credit_events": self.credit_events,
        }


def check_amount(amount: int, field: str = "amount") -> InvalidInput | None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return InvalidInput(field=field, reason="must be a positive whole number of credits")
    if amount > MAX_CREDITS_PER_CHANGE:
        return InvalidInput(field=field, reason=f"must be at most {MAX_CREDITS_PER_CHANGE:,}")
    return None


def check_change_args(
    *, reason: str, actor: Actor, idempotency_key: str | None
) -> InvalidInput | None:
    if not reason.strip() or len(reason) > MAX_REASON_LENGTH:
        return InvalidInput(field="reason", reason=f"must be 1 to {MAX_REASON_LENGTH} characters")
    if actor.source not in SOURCES:
        return InvalidInput(field="source", reason=f"must be one of {', '.join(SOURCES)}")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return InvalidInput(
            field="idempotencyKey", reason=f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    if (
        idempotency_key is not None
        and actor.source in CALLER_SOURCES
        and idempotency_key.startswith(RESERVED_KEY_PREFIXES)
    ):
        return InvalidInput(
            field="idempotencyKey",
            reason=f"keys starting with {' or '.join(RESERVED_KEY_PREFIXES)} are the gateway's own",
        )
    return None


def fingerprint(operation: str, **args: Any) -> str:
    """A digest of what a keyed call asked for: equal digests mean a true retry."""
    text = json.dumps([operation, args], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


async def find_keyed_event(
    session: AsyncSession, key: str | None, digest: str
) -> CreditEvent | IdempotencyConflict | None:
    if key is None:
        return None
    event = (
        await session.execute(select(CreditEvent).where(CreditEvent.idempotency_key == key))
    ).scalar_one_or_none()
    if event is not None and event.fingerprint != digest:
        return IdempotencyConflict(idempotency_key=key)
    return event


async def grant_ai_credits(
    session: AsyncSession,
    *,
    user: UserRef,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    expires_at: datetime | None = None,
    payment_id: int | None = None,
    is_purchased: bool = False,
    idempotency_key: str | None = None,
) -> CreditChanged | UserNotFound | InvalidInput | IdempotencyConflict:
    """Add `amount` credits to the user's balance as one grant and one ledger event."""
    if failure := check_amount(amount) or check_change_args(
        reason=reason, actor=actor, idempotency_key=idempotency_key
    ):
        return failure
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint(
        "grant",
        user=row.id,
        amount=amount,
        reason=reason,
        expires_at=expires_at,
        payment_id=payment_id,
    )
    keyed = await find_keyed_event(session, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return CreditChanged(user=row, event=keyed, replayed=True)
    # Only after the replay check: a retry that arrives once the expiry has passed must still
    # answer its first result, not a validation error.
    if expires_at is not None and expires_at <= now:
        return InvalidInput(field="expiresAt", reason="must be in the future")
    await expire_credits(session, row, now=now, actor=actor)
    event = await _add_grant(
        session,
        row,
        amount=amount,
        reason=reason,
        actor=actor,
        now=now,
        expires_at=expires_at,
        payment_id=payment_id,
        is_purchased=is_purchased,
        idempotency_key=idempotency_key,
        digest=digest,
    )
    return CreditChanged(user=row, event=event)


async def consume_credits(
    session: AsyncSession,
    *,
    user: UserRef,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    idempotency_key: str | None = None,
) -> CreditChanged | InsufficientCredits | UserNotFound | InvalidInput | IdempotencyConflict:
    """Spend `amount` credits, burning the grant that expires first; all or nothing."""
    if failure := check_amount(amount) or check_change_args(
        reason=reason, actor=actor, idempotency_key=idempotency_key
    ):
        return failure
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint("consume", user=row.id, amount=amount, reason=reason)
    keyed = await find_keyed_event(session, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return CreditChanged(user=row, event=keyed, replayed=True)
    await expire_credits(session, row, now=now, actor=actor)
    await grant_plan_allowance(session, row, catalog=catalog, now=now, actor=actor)
    if row.credits_available < amount:
        return InsufficientCredits(available=row.credits_available, requested=amount)

    # Burn order: soonest expiry first (no expiry last), free before purchased, oldest first.
    grants = (
        await session.execute(
            select(CreditGrant)
            .where(CreditGrant.user_id == row.id, CreditGrant.remaining > 0)
            .order_by(
                CreditGrant.expires_at.asc().nulls_last(),
                CreditGrant.is_purchased,
                CreditGrant.created_at,
                CreditGrant.id,
            )
        )
    ).scalars()
    allocations: list[list[int]] = []
    drained_soonest = False
    left = amount
    for grant in grants:
        take = min(left, grant.remaining)
        grant.remaining -= take
        allocations.append([grant.id, take])
        drained_soonest |= grant.remaining == 0 and grant.expires_at == row.credits_next_expiry
        left -= take
        if left == 0:
            break
    if left:
        # The cached balance disagrees with the grants: refuse rather than overspend.
        raise RuntimeError(f"user {row.id}: balance {row.credits_available} exceeds its grants")
    row.credits_available -= amount
    row.updated_at = now
    if drained_soonest and row.credits_next_expiry is not None:
        row.credits_next_expiry = await _next_expiry(session, row.id, now)
    event = _append_event(
        session,
        row,
        kind="consume",
        amount=-amount,
        reason=reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        allocations=allocations,
    )
    await session.flush()
    return CreditChanged(user=row, event=event)


async def expire_credits(session: AsyncSession, user: User, *, now: datetime, actor: Actor) -> int:
    """Write off what is left of the user's expired grants; returns the credits written off.

    The user row must already be locked. Cheap when nothing is due: the row carries the
    soonest expiry, so no grant is read unless one has passed.
    """
    if user.credits_next_expiry is None or user.credits_next_expiry > now:
        return 0
    expired = (
        await session.execute(
            select(CreditGrant)
            .where(
                CreditGrant.user_id == user.id,
                CreditGrant.remaining > 0,
                CreditGrant.expires_at <= now,
            )
            .order_by(CreditGrant.expires_at, CreditGrant.id)
        )
    ).scalars()
    total = 0
    for grant in expired:
        lost = grant.remaining
        grant.remaining = 0
        user.credits_available -= lost
        total += lost
        _append_event(
            session,
            user,
            kind="expire",
            amount=-lost,
            reason="grant expired",
            actor=Actor(name="system", source="system", request_id=actor.request_id),
            now=now,
            grant_id=grant.id,
        )
    user.credits_next_expiry = await _next_expiry(session, user.id, now)
    user.updated_at = now
    await session.flush()
    return total


def allowance_period(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing `now`: the period of a plan allowance."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


async def grant_plan_allowance(
    session: AsyncSession, user: User, *, catalog: Catalog, now: datetime, actor: Actor
) -> CreditEvent | None:
    """Grant the tier's monthly credits for the current month, once; they expire at its end.

    Users billed through a Stripe subscription get theirs from paid invoices instead.
    """
    start, end = allowance_period(now)
    if user.allowance_period_start == start:
        return None
    user.allowance_period_start = start
    tier = catalog.tier(user.tier)
    if tier is None or tier.monthly_credits <= 0:
        return None
    if user.stripe_subscription_id and user.subscription_status in BILLED_BY_STRIPE:
        return None
    key = f"allowance:{user.id}:{tier.code}:{start:%Y-%m}"
    digest = fingerprint("allowance", user=user.id, tier=tier.code, period=start)
    if await find_keyed_event(session, key, digest) is not None:
        return None
    return await _add_grant(
        session,
        user,
        amount=tier.monthly_credits,
        reason=f"{tier.code} plan allowance {start:%Y-%m}",
        actor=Actor(name="system", source="plan_allowance", request_id=actor.request_id),
        now=now,
        expires_at=end,
        idempotency_key=key,
        digest=digest,
    )


async def ensure_plan_metadata(
    session: AsyncSession,
    user: User,
    *,
    catalog: Catalog,
    now: datetime,
    actor: Actor,
    event_count: int = 5,
) -> PlanMetadata:
    """The runbook's account check: expire what is due, grant this period's allowance, report."""
    locked = await find_user(session, UserRef(user_id=user.id), lock=True)
    assert locked is not None, "ensure_plan_metadata is given an existing user"
    await expire_credits(session, locked, now=now, actor=actor)
    await grant_plan_allowance(session, locked, catalog=catalog, now=now, actor=actor)
    events = await recent_credit_events(session, locked.id, limit=event_count)
    return PlanMetadata(
        tier=locked.tier,
        stripe_customer=locked.stripe_customer_id,
        ai_credits=locked.credits_available,
        credit_events=[describe_event(e) for e in reversed(events)],
    )


async def recent_credit_events(session: AsyncSession, user_id: int, *, limit: int) -> list[Any]:
    """The user's newest ledger events, newest first."""
    stmt = (
        select(CreditEvent)
        .where(CreditEvent.user_id == user_id)
        .order_by(CreditEvent.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


def describe_event(event: CreditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "amount": event.amount,
        "balance_after": event.balance_after,
        "reason": event.reason,
        "source": event.source,
        "actor": event.actor,
        "request_id": event.request_id,
        "created_at": event.created_at.isoformat(),
    }


def available_at(user: User, grants: list[CreditGrant], now: datetime) -> int:
    """The balance as of `now`, without writing: the row's, less grants expired since."""
    if user.credits_next_expiry is None or user.credits_next_expiry > now:
        return user.credits_available
    return sum(g.remaining for g in grants if g.expires_at is None or g.expires_at > now)


async def _add_grant(
    session: AsyncSession,
    user: User,
    *,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    expires_at: datetime | None = None,
    payment_id: int | None = None,
    is_purchased: bool = False,
    idempotency_key: str | None = None,
    digest: str | None = None,
) -> CreditEvent:
    grant = CreditGrant(
        user_id=user.id,
        amount=amount,
        remaining=amount,
        expires_at=expires_at,
        source=actor.source,
        is_purchased=is_purchased,
        reason=reason,
        payment_id=payment_id,
        created_at=now,
    )
    session.add(grant)
    await session.flush()
    user.credits_available += amount
    user.updated_at = now
    if expires_at is not None and (
        user.credits_next_expiry is None or expires_at < user.credits_next_expiry
    ):
        user.credits_next_expiry = expires_at
    event = _append_event(
        session,
        user,
        kind="grant",
        amount=amount,
        reason=reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        grant_id=grant.id,
        payment_id=payment_id,
    )
    await session.flush()
    return event


def _append_event(
    session: AsyncSession,
    user: User,
    *,
    kind: str,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None = None,
    digest: str | None = None,
    grant_id: int | None = None,
    payment_id: int | None = None,
    allocations: list[list[int]] | None = None,
) -> CreditEvent:
    event = CreditEvent(
        user_id=user.id,
        kind=kind,
        amount=amount,
        balance_after=user.credits_available,
        reason=reason,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        grant_id=grant_id,
        payment_id=payment_id,
        allocations=allocations,
        created_at=now,
    )
    session.add(event)
    record_change(
        session,
        action=_ACTIONS[kind],
        request_id=actor.request_id,
        user_id=user.id,
        email=user.email,
        kind=kind,
        amount=amount,
        balance_after=user.credits_available,
        reason=reason,
        source=actor.source,
        actor=actor.name,
    )
    return event


async def _next_expiry(session: AsyncSession, user_id: int, now: datetime) -> datetime | None:
    return (
        await session.execute(
            select(func.min(CreditGrant.expires_at)).where(
                CreditGrant.user_id == user_id,
                CreditGrant.remaining > 0,
                CreditGrant.expires_at > now,
            )
        )
    ).scalar_one_or_none()


def is_allowance_due(user: User, now: datetime) -> bool:
    """True when this month's plan allowance has not been looked at yet (a read can tell)."""
    return user.allowance_period_start != allowance_period(now)[0]


async def refresh_balance(
    session: AsyncSession, user_id: int, *, catalog: Catalog, now: datetime, actor: Actor
) -> User | None:
    """Lock the user, write off expired grants and grant a due allowance; the fresh row."""
    row = await find_user(session, UserRef(user_id=user_id), lock=True)
    if row is not None:
        await expire_credits(session, row, now=now, actor=actor)
        await grant_plan_allowance(session, row, catalog=catalog, now=now, actor=actor)
    return row


@dataclass(frozen=True)
class CreditsRevoked:
    """A take-back: what came back from a payment's grants, and what was already spent."""

    user: User
    revoked: int
    unrecovered: int
    event: CreditEvent | None  # None when nothing of the payment's credits was left


async def revoke_payment_credits(
    session: AsyncSession,
    *,
    user_id: int,
    payment_id: int,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
) -> CreditsRevoked | UserNotFound | InvalidInput:
    """Take back up to `amount` credits from what is left of one payment's grants.

    Only that payment's unspent credits are taken, so the balance never goes below zero; the
    rest is reported as unrecovered. One `revoke` event records which grants gave back what.
    """
    if failure := check_amount(amount) or check_change_args(
        reason=reason, actor=actor, idempotency_key=None
    ):
        return failure
    row = await find_user(session, UserRef(user_id=user_id), lock=True)
    if row is None:
        return UserNotFound(user_id=user_id)
    # Expired credits cannot be taken back: write them off first so they are not counted.
    await expire_credits(session, row, now=now, actor=actor)
    grants = (
        await session.execute(
            select(CreditGrant)
            .where(
                CreditGrant.user_id == row.id,
                CreditGrant.payment_id == payment_id,
                CreditGrant.remaining > 0,
            )
            .order_by(CreditGrant.id)
        )
    ).scalars()
    allocations: list[list[int]] = []
    left = amount
    for grant in grants:
        take = min(left, grant.remaining)
        grant.remaining -= take
        allocations.append([grant.id, take])
        left -= take
        if left == 0:
            break
    revoked = amount - left
    if revoked == 0:
        return CreditsRevoked(user=row, revoked=0, unrecovered=amount, event=None)
    row.credits_available -= revoked
    row.updated_at = now
    row.credits_next_expiry = await _next_expiry(session, row.id, now)
    event = _append_event(
        session,
        row,
        kind="revoke",
        amount=-revoked,
        reason=reason,
        actor=actor,
        now=now,
        payment_id=payment_id,
        allocations=allocations,
    )
    await session.flush()
    return CreditsRevoked(user=row, revoked=revoked, unrecovered=left, event=event)
