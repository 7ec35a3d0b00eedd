"""Rows of the billing tables, written directly: tests of readers build any state, broken or not.

The webhook handling owns these tables; these factories only stand in for what it writes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update

from gateway.runtime import Runtime
from resolvers.models import (
    AnalyticsEvent,
    CreditEvent,
    CreditGrant,
    Payment,
    StripeEvent,
    User,
    WebhookSignatureFailure,
)


async def add_row(runtime: Runtime, row: Any) -> Any:
    async def work(session):
        session.add(row)
        await session.flush()
        return row

    return await runtime.db.write(work)


async def update_user(runtime: Runtime, user_id: int, **fields: Any) -> None:
    await runtime.db.write(
        lambda session: session.execute(update(User).where(User.id == user_id).values(**fields))
    )


async def add_payment(
    runtime: Runtime,
    user: User,
    *,
    kind: str = "credit_pack",
    amount: int = 500,
    currency: str = "EUR",
    status: str = "paid",
    created_at: datetime | None = None,
    **fields: Any,
) -> Payment:
    fields.setdefault("pack_code", "credits_100" if kind == "credit_pack" else None)
    fields.setdefault("tier_code", "pro" if kind == "subscription" else None)
    return await add_row(
        runtime,
        Payment(
            user_id=user.id,
            kind=kind,
            stripe_object_id=fields.pop("stripe_object_id", f"cs_test_{uuid.uuid4().hex}"),
            amount=amount,
            currency=currency,
            status=status,
            amount_refunded=fields.pop("amount_refunded", 0),
            credits_granted=fields.pop("credits_granted", 0),
            credits_revoked=fields.pop("credits_revoked", 0),
            credits_unrecovered=fields.pop("credits_unrecovered", 0),
            created_at=created_at or runtime.clock(),
            **fields,
        ),
    )


async def add_paid_grant(runtime: Runtime, user: User, payment: Payment, credits: int) -> None:
    """What a healthy webhook leaves for a payment: a grant, its ledger event, the balance."""
    now = runtime.clock()

    async def work(session):
        grant = CreditGrant(
            user_id=user.id,
            amount=credits,
            remaining=credits,
            source="stripe",
            is_purchased=True,
            reason=f"credit pack {payment.pack_code}",
            payment_id=payment.id,
            created_at=now,
        )
        session.add(grant)
        await session.flush()
        row = await session.get(User, user.id)
        row.credits_available += credits
        session.add(
            CreditEvent(
                user_id=user.id,
                kind="grant",
                amount=credits,
                balance_after=row.credits_available,
                reason=grant.reason,
                source="stripe",
                actor="stripe:evt_test",
                request_id="req-webhook",
                grant_id=grant.id,
                payment_id=payment.id,
                created_at=now,
            )
        )
        await session.execute(
            update(Payment).where(Payment.id == payment.id).values(credits_granted=credits)
        )

    await runtime.db.write(work)


async def add_stripe_event(
    runtime: Runtime,
    *,
    customer_id: str | None,
    status: str = "failed",
    attempts: int = 1,
    event_type: str = "customer.subscription.updated",
    last_error: str | None = "handler failed",
    received_at: datetime | None = None,
) -> StripeEvent:
    now = received_at or runtime.clock()
    return await add_row(
        runtime,
        StripeEvent(
            id=f"evt_{uuid.uuid4().hex}",
            type=event_type,
            created=now,
            payload={"id": "evt", "type": event_type},
            status=status,
            attempts=attempts,
            last_error=last_error if status == "failed" else None,
            stripe_customer_id=customer_id,
            received_at=now,
        ),
    )


async def add_signature_failures(runtime: Runtime, count: int, *, received_at: datetime) -> None:
    async def work(session):
        await session.execute(
            insert(WebhookSignatureFailure),
            [
                {
                    "reason": "no matching signature",
                    "request_id": f"req-{i}",
                    "received_at": received_at,
                }
                for i in range(count)
            ],
        )

    await runtime.db.write(work)


async def add_analytics_event(
    runtime: Runtime, name: str, *, occurred_at: datetime, session_id: str | None = None
) -> AnalyticsEvent:
    return await add_row(
        runtime,
        AnalyticsEvent(name=name, session_id=session_id, properties={}, occurred_at=occurred_at),
    )


async def insert_users(runtime: Runtime, rows: list[dict[str, Any]]) -> None:
    """Many users in one executemany INSERT: fast enough for ten thousand."""
    now = runtime.clock()
    defaults = {"credits_available": 0, "created_at": now, "updated_at": now}
    await runtime.db.write(
        lambda session: session.execute(insert(User), [{**defaults, **row} for row in rows])
    )
