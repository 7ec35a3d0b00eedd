"""Payments: one row per Stripe object paid for, and the credits it granted; found by any id.

A payment is recorded for an account the caller locked (the Stripe event's one user lock), as
every ledger change is: sibling Stripe events about one payment (and a refund racing its
purchase) then take turns. What refunds take back is resolvers.billing.refunds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.billing.purchase_analytics import track_purchase_completed
from resolvers.catalog.model import CreditPack, Tier
from resolvers.errors import (
    IdempotencyConflict,
    InvalidInput,
    PaymentNotFound,
    UserNotFound,
)
from resolvers.ledger.accounts import Account
from resolvers.ledger.credits import CreditChanged, grant_ai_credits
from resolvers.ledger.entries import Actor, LedgerEvent
from resolvers.models import CreditEvent, CreditGrant, Payment, User, parse_row_id
from resolvers.prepared import execute


@dataclass(frozen=True)
class PaymentRecorded:
    payment: Payment
    created: bool  # False: the payment was already recorded and nothing was done
    grant_events: list[CreditEvent | LedgerEvent]


@dataclass(frozen=True)
class PaymentDetails:
    """The runbook's "linking payments to credit balance": the payment, its grants, its events."""

    payment: Payment
    user: User
    grants: list[CreditGrant]
    events: list[CreditEvent]


RecordFailure = UserNotFound | InvalidInput | IdempotencyConflict


def invoice_key(invoice_id: str) -> str:
    """The key of an invoice's grant: by the invoice paid for, so sibling events grant once."""
    return f"stripe:invoice:{invoice_id}"


def checkout_key(checkout_session_id: str) -> str:
    """The key of a credit pack's grant: by the checkout session, so sibling events grant once."""
    return f"stripe:checkout:{checkout_session_id}"


async def record_credit_pack_purchase(
    session: AsyncSession,
    *,
    account: Account,
    checkout_session_id: str,
    pack: CreditPack,
    amount: int,
    currency: str,
    payment_intent_id: str | None,
    actor: Actor,
    now: datetime,
) -> PaymentRecorded | RecordFailure:
    """A paid checkout session: the payment row, the pack's credits, `credit_purchase_completed`."""
    payment = await _insert_payment(
        session,
        user_id=account.id,
        kind="credit_pack",
        stripe_object_id=checkout_session_id,
        stripe_payment_intent_id=payment_intent_id,
        pack_code=pack.code,
        amount=amount,
        currency=currency.upper(),
        status="paid",
        amount_refunded=0,
        credits_granted=pack.credits,
        credits_revoked=0,
        credits_unrecovered=0,
        created_at=now,
    )
    if isinstance(payment, PaymentRecorded):
        return payment
    # Keyed by the checkout session, not the event: its sibling events grant once.
    granted = await grant_ai_credits(
        session,
        user=account,
        amount=pack.credits,
        reason=f"credit pack {pack.code} bought (checkout {checkout_session_id})",
        actor=actor,
        now=now,
        payment_id=payment.id,
        is_purchased=True,
        idempotency_key=checkout_key(checkout_session_id),
    )
    if not isinstance(granted, CreditChanged):
        return granted
    await track_purchase_completed(
        session,
        user_id=account.id,
        checkout_session_id=checkout_session_id,
        properties={
            "pack": pack.code,
            "credits": pack.credits,
            "amount": amount,
            "currency": payment.currency,
            "payment_id": payment.id,
            "checkout_session": checkout_session_id,
        },
        request_id=actor.request_id,
        now=now,
    )
    return PaymentRecorded(payment=payment, created=True, grant_events=[granted.event])


async def record_subscription_payment(
    session: AsyncSession,
    *,
    account: Account,
    invoice_id: str,
    tier: Tier,
    amount: int,
    currency: str,
    period_end: datetime | None,
    payment_intent_id: str | None,
    charge_id: str | None,
    actor: Actor,
    now: datetime,
) -> PaymentRecorded | RecordFailure:
    """A paid subscription invoice: the payment row and the plan's allowance for its period.

    The allowance expires at the period's end; an invoice replayed after that grants nothing.
    """
    credits = tier.monthly_credits if period_end is not None and period_end > now else 0
    payment = await _insert_payment(
        session,
        user_id=account.id,
        kind="subscription",
        stripe_object_id=invoice_id,
        stripe_invoice_id=invoice_id,
        stripe_payment_intent_id=payment_intent_id,
        stripe_charge_id=charge_id,
        tier_code=tier.code,
        amount=amount,
        currency=currency.upper(),
        status="paid",
        amount_refunded=0,
        credits_granted=credits,
        credits_revoked=0,
        credits_unrecovered=0,
        created_at=now,
    )
    if isinstance(payment, PaymentRecorded):
        return payment
    if credits == 0:
        return PaymentRecorded(payment=payment, created=True, grant_events=[])
    granted = await grant_ai_credits(
        session,
        user=account,
        amount=credits,
        reason=f"{tier.code} plan allowance (invoice {invoice_id})",
        actor=actor,
        now=now,
        expires_at=period_end,
        payment_id=payment.id,
        idempotency_key=invoice_key(invoice_id),
    )
    if not isinstance(granted, CreditChanged):
        return granted
    return PaymentRecorded(payment=payment, created=True, grant_events=[granted.event])


async def find_payment_for_charge(
    session: AsyncSession,
    *,
    charge_id: str | None,
    payment_intent_id: str | None,
    invoice_id: str | None,
) -> Payment | None:
    """The payment a Stripe charge belongs to: by charge, else payment intent, else invoice."""
    for column, value in (
        (Payment.stripe_charge_id, charge_id),
        (Payment.stripe_payment_intent_id, payment_intent_id),
        (Payment.stripe_invoice_id, invoice_id),
    ):
        if value:
            stmt = select(Payment).where(column == value).order_by(Payment.id).limit(1)
            if found := (await session.execute(stmt)).scalar_one_or_none():
                return found
    return None


async def list_payments(
    session: AsyncSession, *, limit: int, before_id: int | None = None
) -> list[Payment]:
    """Payments of every user, newest first, below a cursor."""
    stmt = select(Payment).order_by(Payment.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(Payment.id < before_id)
    return list((await session.execute(stmt)).scalars())


async def find_payment(session: AsyncSession, *, ref: str) -> PaymentDetails | PaymentNotFound:
    """A payment by its id or by any Stripe id it carries (cs_, in_, pi_, ch_)."""
    ref = ref.strip()
    if (payment_id := parse_row_id(ref)) is not None:
        payment = await session.get(Payment, payment_id)
    else:
        stmt = (
            select(Payment)
            .where(
                or_(
                    Payment.stripe_object_id == ref,
                    Payment.stripe_payment_intent_id == ref,
                    Payment.stripe_charge_id == ref,
                    Payment.stripe_invoice_id == ref,
                )
            )
            .order_by(Payment.id)
            .limit(1)
        )
        payment = (await session.execute(stmt)).scalar_one_or_none()
    if payment is None:
        return PaymentNotFound(ref=ref)
    user = await session.get(User, payment.user_id)
    assert user is not None, "payments reference existing users"
    grants = (
        await session.execute(
            select(CreditGrant).where(CreditGrant.payment_id == payment.id).order_by(CreditGrant.id)
        )
    ).scalars()
    events = await _payment_events(session, payment.id)
    return PaymentDetails(payment=payment, user=user, grants=list(grants), events=events)


async def _insert_payment(session: AsyncSession, **values: Any) -> Payment | PaymentRecorded:
    """Insert a payment row (Core: no unit of work), or answer the one recorded before.

    One statement for the common case, a new payment: the object's unique index says whether it
    was paid for already (a concurrent insert of it makes this wait for its commit). The row
    returned is detached.
    """
    # The bind's dialect: asking the session for its connection costs a greenlet hop.
    bind = session.bind
    assert bind is not None, "the unit of work's sessions are bound to its engine"
    insert_new = _INSERT_NEW_PAYMENT[bind.dialect.name]
    payment_id = (await execute(session, insert_new, values)).scalar_one_or_none()
    if payment_id is None:
        return await _recorded(session, values["stripe_object_id"])
    return Payment(id=payment_id, **values)


async def _recorded(session: AsyncSession, stripe_object_id: str) -> PaymentRecorded:
    """The payment recorded before for this Stripe object, and the grants it made."""
    payment = (
        await session.execute(select(Payment).where(Payment.stripe_object_id == stripe_object_id))
    ).scalar_one()
    events = [e for e in await _payment_events(session, payment.id) if e.kind == "grant"]
    return PaymentRecorded(payment=payment, created=False, grant_events=list(events))


async def _payment_events(session: AsyncSession, payment_id: int) -> list[CreditEvent]:
    stmt = select(CreditEvent).where(CreditEvent.payment_id == payment_id).order_by(CreditEvent.id)
    return list((await session.execute(stmt)).scalars())


PAYMENTS = Payment.__table__
# A payment for an object paid for before (by a concurrent delivery too, once it commits)
# inserts nothing and returns no row.
_INSERT_NEW_PAYMENT = {
    name: dialect_insert(PAYMENTS)
    .on_conflict_do_nothing(index_elements=[PAYMENTS.c.stripe_object_id])
    .returning(PAYMENTS.c.id)
    for name, dialect_insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}
