"""`credit_purchase_completed`: the CRO analytics event of a bought credit pack, once per sale."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import AnalyticsEvent
from resolvers.prepared import execute

PURCHASE_EVENT = "credit_purchase_completed"
ANALYTICS = AnalyticsEvent.__table__
_TRACKED = select(ANALYTICS.c.id).where(ANALYTICS.c.dedupe_key == bindparam("dedupe_key"))
_TRACK = insert(ANALYTICS)


async def track_purchase_completed(
    session: AsyncSession,
    *,
    user_id: int,
    checkout_session_id: str,
    properties: dict[str, object],
    request_id: str | None,
    now: datetime,
) -> None:
    """Record the purchase for the dashboards unless a sibling event about it already did."""
    dedupe_key = f"{PURCHASE_EVENT}:{checkout_session_id}"
    if (await execute(session, _TRACKED, {"dedupe_key": dedupe_key})).first() is None:
        values = {
            "name": PURCHASE_EVENT,
            "user_id": user_id,
            "properties": properties,
            "dedupe_key": dedupe_key,
            "request_id": request_id,
            "occurred_at": now,
        }
        await execute(session, _TRACK, values)
