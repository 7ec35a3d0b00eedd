"""Deliveries of outgoing events: which are due, what an attempt did, listing and retrying."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from resolvers.errors import DeliveryNotFound
from resolvers.models import OutgoingDelivery, OutgoingEvent

GIVE_UP_AFTER = timedelta(days=3)
FIRST_RETRY = timedelta(seconds=10)
LONGEST_WAIT = timedelta(hours=6)
MAX_ERROR_LENGTH = 500


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after GIVE_UP_AFTER; `retry` sends it again


@dataclass(frozen=True)
class DueDelivery:
    id: int
    endpoint: str
    attempts: int
    message_id: str
    payload: dict[str, Any]
    event_created_at: datetime


_earlier = aliased(OutgoingDelivery)

# The head of each user's queue per endpoint: a delivery waits while an earlier one of the same
# user to the same endpoint is still pending, so a user's events arrive in the order they happened.
_DUE = (
    select(
        OutgoingDelivery.id,
        OutgoingDelivery.endpoint,
        OutgoingDelivery.attempts,
        OutgoingEvent.message_id,
        OutgoingEvent.payload,
        OutgoingEvent.created_at,
    )
    .join(OutgoingEvent, OutgoingEvent.id == OutgoingDelivery.event_id)
    .where(
        OutgoingDelivery.status == DeliveryStatus.PENDING.value,
        ~exists().where(
            and_(
                _earlier.user_id == OutgoingDelivery.user_id,
                _earlier.endpoint == OutgoingDelivery.endpoint,
                _earlier.status == DeliveryStatus.PENDING.value,
                _earlier.id < OutgoingDelivery.id,
            )
        ),
    )
    .order_by(OutgoingDelivery.id)
)


async def due_deliveries(session: AsyncSession, *, now: datetime, limit: int) -> list[DueDelivery]:
    """Deliveries to attempt now, at most one per user and endpoint, oldest first."""
    rows = await session.execute(_DUE.where(OutgoingDelivery.next_attempt_at <= now).limit(limit))
    return [
        DueDelivery(
            id=row.id,
            endpoint=row.endpoint,
            attempts=row.attempts,
            message_id=row.message_id,
            payload=row.payload,
            event_created_at=row.created_at,
        )
        for row in rows
    ]


def next_attempt_at(
    attempts: int, *, event_created_at: datetime, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to try again after `attempts` failed ones, or None: give up.

    Exponential backoff (10 s doubling, at most 6 h apart) with "equal jitter": each wait is
    between half and all of its step, so endpoints coming back are not hit by every retry at
    once. Past three days after the event, it is given up.
    """
    step = min(FIRST_RETRY * 2 ** min(attempts - 1, 30), LONGEST_WAIT)
    wait = step * (0.5 + 0.5 * (rng or random).random())
    when = now + wait
    return None if when > event_created_at + GIVE_UP_AFTER else when


async def record_attempt(
    session: AsyncSession,
    delivery: DueDelivery,
    *,
    now: datetime,
    status_code: int | None,
    error: str | None,
) -> DeliveryStatus:
    """Write what one attempt did: delivered on a 2xx, else its retry time (or given up)."""
    values: dict[str, Any] = {
        "attempts": OutgoingDelivery.attempts + 1,
        "last_status": status_code,
        "last_error": None if error is None else error[:MAX_ERROR_LENGTH],
    }
    if error is None:
        status = DeliveryStatus.DELIVERED
        values["delivered_at"] = now
    else:
        retry_at = next_attempt_at(
            delivery.attempts + 1, event_created_at=delivery.event_created_at, now=now
        )
        status = DeliveryStatus.PENDING if retry_at is not None else DeliveryStatus.FAILED
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
    values["status"] = status.value
    # Only a delivery still pending: support may have retried or it may be done already.
    await session.execute(
        update(OutgoingDelivery)
        .where(
            OutgoingDelivery.id == delivery.id,
            OutgoingDelivery.status == DeliveryStatus.PENDING.value,
        )
        .values(**values)
    )
    return status


@dataclass(frozen=True)
class DeliveryRow:
    delivery: OutgoingDelivery
    event: OutgoingEvent

    @property
    def id(self) -> int:
        return self.delivery.id


async def retry_delivery(
    session: AsyncSession, *, delivery_id: int, now: datetime
) -> DeliveryRow | DeliveryNotFound:
    """Send a delivery again at the next dispatch, whatever its status (support's resend)."""
    delivery = await session.get(OutgoingDelivery, delivery_id, with_for_update=True)
    if delivery is None:
        return DeliveryNotFound(delivery_id=str(delivery_id))
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_attempt_at = now
    delivery.delivered_at = None
    event = await session.get(OutgoingEvent, delivery.event_id)
    assert event is not None, "a delivery's event"
    return DeliveryRow(delivery=delivery, event=event)


async def list_deliveries(
    session: AsyncSession,
    *,
    status: DeliveryStatus | None = None,
    limit: int,
    before_id: int | None = None,
) -> Sequence[DeliveryRow]:
    """Deliveries newest first, with their events; `before_id` pages on."""
    query = (
        select(OutgoingDelivery, OutgoingEvent)
        .join(OutgoingEvent, OutgoingEvent.id == OutgoingDelivery.event_id)
        .order_by(OutgoingDelivery.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(OutgoingDelivery.status == status.value)
    if before_id is not None:
        query = query.where(OutgoingDelivery.id < before_id)
    return [DeliveryRow(delivery=d, event=e) for d, e in (await session.execute(query)).all()]
