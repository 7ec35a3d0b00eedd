"""The ledger's rows: grants and the append-only events, and the rules every change keeps.

The building blocks of resolvers.credits (and of Stripe's take-backs): callers hold the user
row's lock, so the balance on the row, the grants' remaining amounts and the events move
together in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.changes import record_change
from resolvers.errors import IdempotencyConflict, InvalidInput
from resolvers.models import CreditEvent, CreditGrant, TierChange, User

SOURCES = ("support", "stripe", "usage", "plan_allowance", "system")
# Keys the gateway makes for itself (plan allowances, Stripe payments). A caller's key in these
# namespaces would claim the key first and so silently block that allowance or those credits.
RESERVED_KEY_PREFIXES = ("allowance:", "stripe:")
CALLER_SOURCES = ("support", "usage")
MAX_CREDITS_PER_CHANGE = 1_000_000
MAX_REASON_LENGTH = 500
MAX_IDEMPOTENCY_KEY_LENGTH = 255
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


# Where a key was used before, in one statement: a credit change (replay it, or conflict) or a
# tier change (a key names one operation: conflict).
_KEY_USES = union_all(
    select(CreditEvent.id, CreditEvent.fingerprint, literal("credit").label("kind")).where(
        CreditEvent.idempotency_key == bindparam("key")
    ),
    select(TierChange.id, TierChange.fingerprint, literal("tier").label("kind")).where(
        TierChange.idempotency_key == bindparam("key")
    ),
)


async def find_keyed_event(
    session: AsyncSession, key: str | None, digest: str
) -> CreditEvent | IdempotencyConflict | None:
    if key is None:
        return None
    used = (await session.execute(_KEY_USES, {"key": key})).first()
    if used is None:
        return None
    if used.kind != "credit" or used.fingerprint != digest:
        return IdempotencyConflict(idempotency_key=key)
    return await session.get(CreditEvent, used.id)


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
        append_event(
            session,
            user,
            kind="expire",
            amount=-lost,
            reason="grant expired",
            actor=Actor(name="system", source="system", request_id=actor.request_id),
            now=now,
            grant_id=grant.id,
        )
    user.credits_next_expiry = await next_expiry(session, user.id, now)
    user.updated_at = now
    await session.flush()
    return total


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


async def add_grant(
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
    event = append_event(
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


def append_event(
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


async def next_expiry(session: AsyncSession, user_id: int, now: datetime) -> datetime | None:
    return (
        await session.execute(
            select(func.min(CreditGrant.expires_at)).where(
                CreditGrant.user_id == user_id,
                CreditGrant.remaining > 0,
                CreditGrant.expires_at > now,
            )
        )
    ).scalar_one_or_none()


def take_from(grants: Iterable[CreditGrant], amount: int) -> tuple[list[list[int]], int]:
    """Take up to `amount` from the grants in the order given: ([[grant id, taken]], not taken)."""
    allocations: list[list[int]] = []
    left = amount
    for grant in grants:
        if left == 0:
            break
        take = min(left, grant.remaining)
        grant.remaining -= take
        allocations.append([grant.id, take])
        left -= take
    return allocations, left
