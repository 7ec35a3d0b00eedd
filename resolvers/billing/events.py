"""Stored Stripe events as read: their statuses, pages of them, counts, and refused signatures.

Storing and applying an event is resolvers.billing.deliveries; this is what support, the
dashboards and /metrics read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.errors import InvalidInput
from resolvers.models import StripeEvent, WebhookSignatureFailure

STATUSES = ("processed", "ignored", "failed")


@dataclass(frozen=True)
class StripeEventPage:
    events: list[StripeEvent]
    has_more: bool


async def list_stripe_events(
    session: AsyncSession,
    *,
    status: str | None = None,
    limit: int = 50,
    after: str | None = None,
) -> StripeEventPage | InvalidInput:
    """Stored events, newest received first; `after` is the id of the last event of a page."""
    if status is not None and status not in STATUSES:
        return InvalidInput(field="status", reason=f"must be one of {', '.join(STATUSES)}")
    if not 0 < limit <= 500:
        return InvalidInput(field="limit", reason="must be 1 to 500")
    stmt = select(StripeEvent)
    if status is not None:
        stmt = stmt.where(StripeEvent.status == status)
    if after is not None:
        cursor = await session.get(StripeEvent, after)
        if cursor is None:
            return InvalidInput(field="after", reason=f"no stored event {after!r}")
        stmt = stmt.where(
            tuple_(StripeEvent.received_at, StripeEvent.id) < (cursor.received_at, cursor.id)
        )
    stmt = stmt.order_by(StripeEvent.received_at.desc(), StripeEvent.id.desc()).limit(limit + 1)
    rows = list((await session.execute(stmt)).scalars())
    return StripeEventPage(events=rows[:limit], has_more=len(rows) > limit)


async def record_signature_failure(
    session: AsyncSession, *, reason: str, request_id: str | None, now: datetime
) -> WebhookSignatureFailure:
    row = WebhookSignatureFailure(reason=reason[:255], request_id=request_id, received_at=now)
    session.add(row)
    await session.flush()
    return row


async def count_stripe_events_by_status(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(StripeEvent.status, func.count()).group_by(StripeEvent.status)
    )
    return {status: count for status, count in rows.all()}


async def count_signature_failures(session: AsyncSession, *, since: datetime | None = None) -> int:
    """Webhook deliveries refused for their signature (since `since`): the diagnose counter."""
    stmt = select(func.count()).select_from(WebhookSignatureFailure)
    if since is not None:
        stmt = stmt.where(WebhookSignatureFailure.received_at >= since)
    return (await session.execute(stmt)).scalar_one()
