"""Credit operations: grants, spends, take-backs and the monthly plan allowance.

Every write here runs inside the caller's transaction and starts by locking the user row, so the
balance on the row, the grants' remaining amounts and the ledger events move together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    UserNotFound,
)
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.ledger.allowances import pending_allowance, refresh_balance
from resolvers.ledger.entries import (
    Actor,
    LedgerEvent,
    add_grant,
    append_event,
    check_amount,
    check_change_args,
    describe_event,
    expire_credits,
    find_keyed_event,
    recent_credit_events,
    spend_grants,
    take_back_payment,
)
from resolvers.ledger.idempotency import fingerprint
from resolvers.ledger.spends import spend_in_database
from resolvers.ledger.statements import InSession, Statements, runs_in_database
from resolvers.models import CreditGrant, User
from resolvers.users import UserRef


@dataclass(frozen=True)
class CreditChanged:
    user: Account
    event: LedgerEvent
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


async def grant_ai_credits(
    session: AsyncSession,
    *,
    user: UserRef | Account,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    expires_at: datetime | None = None,
    payment_id: int | None = None,
    is_purchased: bool = False,
    idempotency_key: str | None = None,
    catalog: Catalog | None = None,
) -> CreditChanged | UserNotFound | InvalidInput | IdempotencyConflict:
    """Add `amount` credits to the user's balance as one grant and one ledger event.

    Given the catalog, a monthly allowance that is due is granted first, so the balance the
    caller is shown is the one reads already showed. `user` may be an account the caller
    already locked in this transaction.
    """
    if failure := check_amount(amount) or check_change_args(
        reason=reason, actor=actor, idempotency_key=idempotency_key
    ):
        return failure
    row = await lock_account(session, user, idempotency_key=idempotency_key)
    if row is None:
        return _not_found(user)
    digest = fingerprint(
        "grant",
        user=row.id,
        amount=amount,
        reason=reason,
        expires_at=expires_at,
        payment_id=payment_id,
    )
    keyed = await find_keyed_event(session, row, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return CreditChanged(user=row, event=keyed, replayed=True)
    # Only after the replay check: a retry that arrives once the expiry has passed must still
    # answer its first result, not a validation error.
    if expires_at is not None and expires_at.tzinfo is None:
        return InvalidInput(field="expiresAt", reason="needs a time zone, e.g. Z or +01:00")
    if expires_at is not None and expires_at <= now:
        return InvalidInput(field="expiresAt", reason="must be in the future")
    await refresh_balance(session, row, catalog=catalog, now=now, actor=actor)
    event = await add_grant(
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
    user: UserRef | Account,
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
    if isinstance(user, UserRef) and runs_in_database(session):
        spent = await _spend_in_one_statement(
            InSession(session), user, amount, reason, actor, now, idempotency_key
        )
        if spent is not None:
            return spent
    row = await lock_account(session, user, idempotency_key=idempotency_key)
    if row is None:
        return _not_found(user)
    digest = fingerprint("consume", user=row.id, amount=amount, reason=reason)
    keyed = await find_keyed_event(session, row, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return CreditChanged(user=row, event=keyed, replayed=True)
    await refresh_balance(session, row, catalog=catalog, now=now, actor=actor)
    if row.credits_available < amount:
        return InsufficientCredits(available=row.credits_available, requested=amount)
    allocations = await spend_grants(session, row, amount, now=now)
    await save_account(session, row)
    event = await append_event(
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
    return CreditChanged(user=row, event=event)


async def consume_credits_alone(
    statements: Statements,
    *,
    user: UserRef,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None = None,
) -> CreditChanged | InsufficientCredits | UserNotFound | InvalidInput | None:
    """consume_credits as one statement before any transaction (PostgreSQL): its answer, or
    None when only the Python rule can give it (a user named by email, a used key, 'fallback')."""
    if failure := check_amount(amount) or check_change_args(
        reason=reason, actor=actor, idempotency_key=idempotency_key
    ):
        return failure
    return await _spend_in_one_statement(
        statements, user, amount, reason, actor, now, idempotency_key
    )


async def _spend_in_one_statement(
    statements: Statements,
    user: UserRef,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None,
) -> CreditChanged | InsufficientCredits | UserNotFound | None:
    """The spend by the `spend_credits` function (PostgreSQL), in a session or alone; None:
    the Python rule decides (a user named by email, a used key, the function's 'fallback')."""
    if user.user_id is None:
        return None
    spent = await spend_in_database(
        statements,
        user_id=user.user_id,
        amount=amount,
        reason=reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=fingerprint("consume", user=user.user_id, amount=amount, reason=reason),
    )
    if isinstance(spent, tuple):
        return CreditChanged(user=spent[0], event=spent[1])
    return spent


async def revoke_payment_credits(
    session: AsyncSession,
    *,
    user: UserRef | Account,
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
    row = await lock_account(session, user)
    if row is None:
        return _not_found(user)
    # Expired credits cannot be taken back: write them off first so they are not counted.
    await expire_credits(session, row, now=now, actor=actor)
    allocations, left = await take_back_payment(
        session, row, payment_id=payment_id, amount=amount, now=now
    )
    revoked = amount - left
    if revoked == 0:
        return CreditsRevoked(user=row, revoked=0, unrecovered=amount, event=None)
    await save_account(session, row)
    event = await append_event(
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
    return CreditsRevoked(user=row, revoked=revoked, unrecovered=left, event=event)


@dataclass(frozen=True)
class CreditsRevoked:
    """A take-back: what came back from a payment's grants, and what was already spent."""

    user: Account
    revoked: int
    unrecovered: int
    event: LedgerEvent | None  # None when nothing of the payment's credits was left


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
    locked = await lock_account(session, UserRef(user_id=user.id))
    assert locked is not None, "ensure_plan_metadata is given an existing user"
    await refresh_balance(session, locked, catalog=catalog, now=now, actor=actor)
    events = await recent_credit_events(session, locked.id, limit=event_count)
    return PlanMetadata(
        tier=locked.tier,
        stripe_customer=locked.stripe_customer_id,
        ai_credits=locked.credits_available,
        credit_events=[describe_event(e) for e in reversed(events)],
    )


async def read_plan_metadata(
    session: AsyncSession,
    user: User,
    *,
    catalog: Catalog,
    now: datetime,
    event_count: int = 5,
) -> PlanMetadata:
    """What `ensure_plan_metadata` would report, as a read: nothing is written.

    The balance is the one a write would leave: expired grants not counted, a due monthly
    allowance counted as granted.
    """
    events = await recent_credit_events(session, user.id, limit=event_count)
    return PlanMetadata(
        tier=user.tier,
        stripe_customer=user.stripe_customer_id,
        ai_credits=await spendable_balance(session, user, catalog=catalog, now=now),
        credit_events=[describe_event(e) for e in reversed(events)],
    )


async def spendable_balance(
    session: AsyncSession, user: User, *, catalog: Catalog, now: datetime
) -> int:
    """The balance a spend would see now, without writing off expiries or granting."""
    available = user.credits_available
    if user.credits_next_expiry is not None and user.credits_next_expiry <= now:
        available = (
            await session.scalar(
                select(func.coalesce(func.sum(CreditGrant.remaining), 0)).where(
                    CreditGrant.user_id == user.id,
                    CreditGrant.remaining > 0,
                    or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now),
                )
            )
            or 0
        )
    due = pending_allowance(user, catalog=catalog, now=now)
    return available + (due.amount if due else 0)


def _not_found(user: UserRef | Account) -> UserNotFound:
    # An account is locked, so it exists: only a reference can name nobody.
    assert isinstance(user, UserRef)
    return user.not_found()
