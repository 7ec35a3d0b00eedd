"""The ledger: the only module that moves a balance, and the append-only events that record it.

Every change of `credits_available` or `credits_held` is a function here: a grant, a spend, a
hold set aside or closed, a take-back, an expiry. Callers (credits, holds, tiers, allowances,
Stripe's payments) compose them; they hold the user row's lock, so the balance on the row, the
grants' remaining amounts and the events move together in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.errors import IdempotencyConflict, InvalidInput
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.ledger.changes import record_change
from resolvers.ledger.grants import (
    empty_grants,
    expired_grants,
    give_back,
    insert_grant,
    next_expiry,
    payment_grants,
    spendable_grants,
    take_from,
    take_grants,
)
from resolvers.ledger.held_credits import close_hold, next_hold_expiry
from resolvers.ledger.idempotency import KeyKind, check_key, earlier_use
from resolvers.models import CreditEvent, CreditHold
from resolvers.prepared import execute

EVENTS = CreditEvent.__table__
HOLDS = CreditHold.__table__

SOURCES = ("support", "stripe", "usage", "plan_allowance", "system")
MAX_CREDITS_PER_CHANGE = 1_000_000
MAX_REASON_LENGTH = 500
_ACTIONS = {
    "grant": "credits_granted",
    "consume": "credits_consumed",
    "expire": "credits_expired",
    "revoke": "credits_revoked",
    "hold": "credits_held",
    "settle": "hold_settled",
    "release": "hold_released",
    "hold_expire": "hold_expired",
}


@dataclass(frozen=True)
class Actor:
    """Who asked for a change, from where, and under which request id."""

    name: str
    source: str
    request_id: str | None = None

    def provenance(
        self, idempotency_key: str | None, digest: str | None, now: datetime
    ) -> dict[str, Any]:
        """The columns every change record carries: who, from where, under which key, when."""
        return {
            "source": self.source,
            "actor": self.name,
            "request_id": self.request_id,
            "idempotency_key": idempotency_key,
            "fingerprint": digest,
            "created_at": now,
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
    return check_key(idempotency_key, actor.source)


async def find_keyed_event(
    session: AsyncSession, account: Account, key: str | None, digest: str
) -> LedgerEvent | IdempotencyConflict | None:
    """The event a true retry should answer again, a conflict, or None: the key is free.

    The lock statement already looked the key up (`lock_account`), so a fresh key costs nothing.
    """
    if key is None:
        return None
    if account.key != key:
        await lock_account(session, account, idempotency_key=key)
    used = earlier_use(account.key_use, key=key, kind=KeyKind.CREDIT, digest=digest)
    if used is None or isinstance(used, IdempotencyConflict):
        return used
    row = (await execute(session, _EVENT_BY_ID, {"event_id": used})).one()
    return LedgerEvent(**row._mapping)


async def expire_credits(
    session: AsyncSession, user: Account, *, now: datetime, actor: Actor
) -> int:
    """Write off what is left of the user's expired grants; returns the credits written off.

    The user row must already be locked. Cheap when nothing is due: the row carries the
    soonest expiry, so no grant is read unless one has passed. Holds past their expiry are
    released first: their credits go back to their grants, and from expired grants are lost.
    """
    if user.holds_next_expiry is not None and user.holds_next_expiry <= now:
        await expire_holds(session, user, now=now, actor=actor)
    if user.credits_next_expiry is None or user.credits_next_expiry > now:
        return 0
    expired = await expired_grants(session, user.id, now)
    system = Actor(name="system", source="system", request_id=actor.request_id)
    total = 0
    if expired:
        await empty_grants(session, expired)
    for grant in expired:
        user.credits_available -= grant.remaining
        total += grant.remaining
        await append_event(
            session,
            user,
            kind="expire",
            amount=-grant.remaining,
            reason="grant expired",
            actor=system,
            now=now,
            grant_id=grant.id,
        )
    user.credits_next_expiry = await next_expiry(session, user.id, now)
    user.updated_at = now
    await save_account(session, user)
    return total


async def expire_holds(
    session: AsyncSession, user: Account, *, now: datetime, actor: Actor
) -> None:
    """Release the user's active holds whose time ran out; the user row must be locked."""
    due = (await execute(session, _DUE_HOLDS, {"user_id": user.id, "now": now})).all()
    system = Actor(name="system", source="system", request_id=actor.request_id)
    for hold in due:
        # Closed at its expiry, not now: from then on its credits were the user's to spend.
        await close_hold(session, hold.id, status="expired", closed_at=hold.expires_at)
        await unhold(session, user, held=hold.amount, back=hold.allocations)
        await append_event(
            session,
            user,
            kind="hold_expire",
            amount=0,
            reason="hold expired",
            actor=system,
            now=now,
            hold_id=hold.id,
            allocations=hold.allocations,
        )
    user.holds_next_expiry = await next_hold_expiry(session, user.id)
    user.updated_at = now
    await save_account(session, user)


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
    user: Account,
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
) -> LedgerEvent:
    grant_id = await insert_grant(
        session,
        {
            "user_id": user.id,
            "amount": amount,
            "remaining": amount,
            "expires_at": expires_at,
            "source": actor.source,
            "is_purchased": is_purchased,
            "reason": reason,
            "payment_id": payment_id,
            "created_at": now,
        },
    )
    user.credits_available += amount
    user.updated_at = now
    if expires_at is not None and (
        user.credits_next_expiry is None or expires_at < user.credits_next_expiry
    ):
        user.credits_next_expiry = expires_at
    await save_account(session, user)
    return await append_event(
        session,
        user,
        kind="grant",
        amount=amount,
        reason=reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        grant_id=grant_id,
        payment_id=payment_id,
    )


async def append_event(
    session: AsyncSession,
    user: Account,
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
    hold_id: int | None = None,
) -> LedgerEvent:
    """Insert one ledger event carrying the account's balance after it, and queue its log line.

    The balance is what the user owns: available credits and held ones, which are still theirs
    until a settlement spends them.
    """
    values = {
        "user_id": user.id,
        "kind": kind,
        "amount": amount,
        "balance_after": user.credits_available + user.credits_held,
        "reason": reason,
        "grant_id": grant_id,
        "payment_id": payment_id,
        "allocations": allocations,
        "hold_id": hold_id,
        **actor.provenance(idempotency_key, digest, now),
    }
    event_id = (await execute(session, _INSERT_EVENT, values)).scalar_one()
    record_change(
        session,
        action=_ACTIONS[kind],
        request_id=actor.request_id,
        user_id=user.id,
        email=user.email,
        kind=kind,
        amount=amount,
        balance_after=user.credits_available + user.credits_held,
        held=user.credits_held,
        hold_id=hold_id,
        reason=reason,
        source=actor.source,
        actor=actor.name,
    )
    return LedgerEvent(id=event_id, **values)


async def spend_grants(
    session: AsyncSession, user: Account, amount: int, *, now: datetime
) -> list[list[int]]:
    """Take `amount` off the locked user's available credits and their grants in the burn order.

    The spend rule, shared by a spend and a hold: [[grant id, taken], ...]. Expired grants must
    already be written off; the caller saves the account.
    """
    grants = await spendable_grants(session, user.id)
    allocations, left = take_from(grants, amount)
    if left:
        # The cached balance disagrees with the grants: refuse rather than overspend.
        raise RuntimeError(f"user {user.id}: balance {user.credits_available} exceeds its grants")
    await take_grants(session, grants, allocations)
    taken = dict(allocations)
    # Every grant with credits left was read, so the soonest expiry is known without asking.
    user.credits_next_expiry = min(
        (
            g.expires_at
            for g in grants
            if g.expires_at is not None and g.expires_at > now and g.remaining > taken.get(g.id, 0)
        ),
        default=None,
    )
    user.credits_available -= amount
    user.updated_at = now
    return allocations


async def hold_grants(
    session: AsyncSession, user: Account, amount: int, *, now: datetime, until: datetime
) -> list[list[int]]:
    """Set `amount` aside, taken from the grants like a spend: out of available, still owned."""
    allocations = await spend_grants(session, user, amount, now=now)
    user.credits_held += amount
    if user.holds_next_expiry is None or until < user.holds_next_expiry:
        user.holds_next_expiry = until
    return allocations


async def unhold(session: AsyncSession, user: Account, *, held: int, back: list[list[int]]) -> None:
    """Close `held` credits of a hold: `back` returns to the grants it came from, the rest is spent.

    Returned credits keep their grant's expiry; a grant that expired meanwhile gets them back
    too, and the soonest expiry on the row says so: the next `expire_credits` writes them off.
    """
    user.credits_held -= held
    if not back:
        return
    soonest = await give_back(session, back)
    user.credits_available += sum(n for _, n in back)
    if soonest is not None and (
        user.credits_next_expiry is None or soonest < user.credits_next_expiry
    ):
        user.credits_next_expiry = soonest


async def take_back_payment(
    session: AsyncSession, user: Account, *, payment_id: int, amount: int, now: datetime
) -> tuple[list[list[int]], int]:
    """Take up to `amount` off what is left of one payment's grants: (allocations, not taken)."""
    grants = await payment_grants(session, user.id, payment_id)
    allocations, left = take_from(grants, amount)
    if allocations:
        await take_grants(session, grants, allocations)
        user.credits_available -= amount - left
        user.updated_at = now
        user.credits_next_expiry = await next_expiry(session, user.id, now)
    return allocations, left


@dataclass(frozen=True)
class LedgerEvent:
    """One written (or replayed) ledger event: the `credit_events` row."""

    id: int
    user_id: int
    kind: str
    amount: int
    balance_after: int
    reason: str
    source: str
    actor: str
    request_id: str | None
    idempotency_key: str | None
    fingerprint: str | None
    grant_id: int | None
    payment_id: int | None
    allocations: list[list[int]] | None
    created_at: datetime
    hold_id: int | None = None


# Built once: building a statement costs more than running SQLAlchemy's cached compile of it.
_EVENT_BY_ID = select(EVENTS).where(EVENTS.c.id == bindparam("event_id"))
_INSERT_EVENT = insert(EVENTS).returning(EVENTS.c.id)
_DUE_HOLDS = (
    select(HOLDS.c.id, HOLDS.c.amount, HOLDS.c.allocations, HOLDS.c.expires_at)
    .where(
        HOLDS.c.user_id == bindparam("user_id"),
        HOLDS.c.status == "active",
        HOLDS.c.expires_at <= bindparam("now", type_=HOLDS.c.expires_at.type),
    )
    .order_by(HOLDS.c.expires_at, HOLDS.c.id)
)
