"""The outgoing events: their types, and writing one into the outbox with its deliveries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import OutgoingDelivery, OutgoingEvent


class EventType(StrEnum):
    LOW_BALANCE = "credits.low_balance"
    DEPLETED = "credits.depleted"
    EXPIRING_SOON = "credits.expiring_soon"
    HOLD_EXPIRED = "hold.expired"
    TIER_CHANGED = "tier.changed"
    LIMIT_REACHED = "entitlement.limit_reached"


@dataclass(frozen=True)
class OutboxConfig:
    """What the outbox needs from the settings: where events go, and how early to warn."""

    endpoints: tuple[str, ...]
    expiring_soon_days: int = 7

    @property
    def is_enabled(self) -> bool:
        return bool(self.endpoints)


async def enqueue_event(
    session: AsyncSession,
    *,
    config: OutboxConfig,
    type: EventType,
    user: dict[str, Any],
    data: dict[str, Any],
    now: datetime,
    request_id: str | None = None,
    dedupe_key: str | None = None,
) -> int:
    """Write one event and a pending delivery of it to every endpoint; the event's row id.

    `user` is {"id", "email"}. Runs in the caller's transaction: the event commits with the
    change it tells of, or not at all.
    """
    message_id = f"msg_{uuid.uuid4().hex}"
    payload = {
        "type": type.value,
        "timestamp": now.isoformat(),
        "data": {"userId": str(user["id"]), "email": user["email"], **data},
    }
    conn = await session.connection()
    event_id = (
        await conn.execute(
            insert(OutgoingEvent).returning(OutgoingEvent.id),
            {
                "message_id": message_id,
                "type": type.value,
                "user_id": user["id"],
                "payload": payload,
                "dedupe_key": dedupe_key,
                "request_id": request_id,
                "created_at": now,
            },
        )
    ).scalar_one()
    await conn.execute(
        insert(OutgoingDelivery),
        [
            {
                "event_id": event_id,
                "user_id": user["id"],
                "endpoint": endpoint,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint in config.endpoints
        ],
    )
    return event_id
