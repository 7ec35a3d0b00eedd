"""credits.expiring_soon: N days before a grant with credits left expires, once per grant."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, cast, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import CreditGrant, OutgoingEvent, User
from resolvers.outbox.events import EventType, OutboxConfig, enqueue_event

_KEY_PREFIX = f"{EventType.EXPIRING_SOON.value}:grant:"


async def warn_expiring_grants(
    session: AsyncSession, *, config: OutboxConfig, now: datetime, limit: int = 200
) -> int:
    """Queue expiring_soon for up to `limit` grants not yet warned of; how many were queued.

    Once per grant: the event's dedupe key names the grant, and its unique index makes a
    second sweep (or a concurrent one) write nothing.
    """
    if not config.is_enabled:
        return 0
    key = literal(_KEY_PREFIX) + cast(CreditGrant.id, String)
    due = (
        await session.execute(
            select(
                CreditGrant.id, CreditGrant.remaining, CreditGrant.expires_at, User.id, User.email
            )
            .join(User, User.id == CreditGrant.user_id)
            .outerjoin(OutgoingEvent, OutgoingEvent.dedupe_key == key)
            .where(
                CreditGrant.remaining > 0,
                CreditGrant.expires_at > now,
                CreditGrant.expires_at <= now + timedelta(days=config.expiring_soon_days),
                OutgoingEvent.id.is_(None),
            )
            .order_by(CreditGrant.expires_at, CreditGrant.id)
            .limit(limit)
        )
    ).all()
    for grant_id, remaining, expires_at, user_id, email in due:
        await enqueue_event(
            session,
            config=config,
            type=EventType.EXPIRING_SOON,
            user={"id": user_id, "email": email},
            data={
                "grantId": str(grant_id),
                "credits": remaining,
                "expiresAt": expires_at.isoformat(),
            },
            now=now,
            dedupe_key=f"{_KEY_PREFIX}{grant_id}",
        )
    return len(due)
