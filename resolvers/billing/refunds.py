"""Refunds and disputes: the share of a payment's credits that Stripe's money back takes back.

Stripe reports cumulative amounts (refunded so far, disputed), so each event recomputes the share
due from the total and takes only the difference with what was already settled: replays and
retries take nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.errors import InvalidInput, UserNotFound
from resolvers.ledger.accounts import Account
from resolvers.ledger.credits import revoke_payment_credits
from resolvers.ledger.entries import Actor, LedgerEvent
from resolvers.models import Payment


@dataclass(frozen=True)
class CreditsTakenBack:
    payment: Payment
    revoked: int
    unrecovered: int
    event: LedgerEvent | None


async def refund_payment(
    session: AsyncSession,
    *,
    account: Account,
    payment_id: int,
    amount_refunded: int,
    charge_id: str | None,
    actor: Actor,
    now: datetime,
) -> CreditsTakenBack | UserNotFound | InvalidInput:
    """Stripe's charge says `amount_refunded` in total so far: take back that share of credits.

    `account` is the payment's owner, locked by the caller in this transaction.
    """

    def update(payment: Payment) -> int:
        payment.amount_refunded = max(payment.amount_refunded, amount_refunded)
        payment.status = (
            "refunded" if payment.amount_refunded >= payment.amount else "partially_refunded"
        )
        return payment.amount_refunded

    return await _take_back(
        session,
        account=account,
        payment_id=payment_id,
        charge_id=charge_id,
        update=update,
        reason=f"refund of payment {payment_id}" + (f" (charge {charge_id})" if charge_id else ""),
        actor=actor,
        now=now,
    )


async def dispute_payment(
    session: AsyncSession,
    *,
    account: Account,
    payment_id: int,
    disputed_amount: int,
    dispute_id: str,
    charge_id: str | None,
    actor: Actor,
    now: datetime,
) -> CreditsTakenBack | UserNotFound | InvalidInput:
    """A dispute freezes the disputed money: its share of credits is taken back like a refund."""

    def update(payment: Payment) -> int:
        payment.status = "disputed"
        return max(payment.amount_refunded, disputed_amount)

    return await _take_back(
        session,
        account=account,
        payment_id=payment_id,
        charge_id=charge_id,
        update=update,
        reason=f"dispute {dispute_id} on payment {payment_id}",
        actor=actor,
        now=now,
    )


async def _take_back(
    session: AsyncSession,
    *,
    account: Account,
    payment_id: int,
    charge_id: str | None,
    update: Callable[[Payment], int],
    reason: str,
    actor: Actor,
    now: datetime,
) -> CreditsTakenBack | UserNotFound | InvalidInput:
    # Re-read under the owner's lock: a concurrent refund of the same payment has committed.
    payment = (
        await session.execute(
            select(Payment)
            .where(Payment.id == payment_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert payment.user_id == account.id, "the caller locked the payment's owner"
    if charge_id and payment.stripe_charge_id is None:
        payment.stripe_charge_id = charge_id
    covered = min(update(payment), payment.amount)
    target = payment.credits_granted * covered // payment.amount if payment.amount > 0 else 0
    due = target - payment.credits_revoked - payment.credits_unrecovered
    if due <= 0:
        await session.flush()
        return CreditsTakenBack(payment=payment, revoked=0, unrecovered=0, event=None)
    result = await revoke_payment_credits(
        session,
        user=account,
        payment_id=payment.id,
        amount=due,
        reason=reason,
        actor=actor,
        now=now,
    )
    if isinstance(result, UserNotFound | InvalidInput):
        return result
    payment.credits_revoked += result.revoked
    payment.credits_unrecovered += result.unrecovered
    await session.flush()
    return CreditsTakenBack(
        payment=payment, revoked=result.revoked, unrecovered=result.unrecovered, event=result.event
    )
