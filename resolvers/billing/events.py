"""Stripe events: stored, then turned into effects through the same ledger and tier resolvers.

`receive_stripe_event` (the webhook) and `replay_stripe_event` (CLI, support) both store the
event and apply it in the caller's one transaction; `handle_stripe_event` is the effects alone.
A handler failure is returned as `StripeEventFailed`: the unit of work rolls the effects back
and the caller records the failure with `record_stripe_event_failure` in a second transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from stripe import StripeClient

from resolvers.billing import money as effects
from resolvers.billing.money import EventContext, EventHandled, Handler, object_id
from resolvers.billing.subscriptions import subscription_changed
from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput, StripeEventFailed, StripeEventNotFound
from resolvers.ledger.entries import Actor
from resolvers.models import StripeEvent, WebhookSignatureFailure

STATUSES = ("processed", "ignored", "failed")
MAX_ERROR_LENGTH = 2000
HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": effects.checkout_completed,
    "checkout.session.async_payment_succeeded": effects.checkout_completed,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    "invoice.paid": effects.invoice_paid,
    "charge.refunded": effects.charge_refunded,
    "charge.dispute.created": effects.dispute_created,
}


@dataclass(frozen=True)
class StripeEventOutcome:
    event: StripeEvent
    status: str  # processed | ignored
    effects: tuple[str, ...] = ()
    note: str | None = None
    duplicate: bool = False  # already processed before this delivery; nothing was done
    replayed: bool = False


@dataclass(frozen=True)
class StripeEventPage:
    events: list[StripeEvent]
    has_more: bool


def check_stripe_event(payload: Any) -> InvalidInput | None:
    """A verified body is still only worth storing if it has the shape of a Stripe event."""
    if not isinstance(payload, dict):
        return InvalidInput(field="body", reason="not a JSON object")
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        return InvalidInput(field="id", reason="not a Stripe event id (evt_…)")
    if not isinstance(payload.get("type"), str) or not 0 < len(payload["type"]) <= 128:
        return InvalidInput(field="type", reason="missing event type")
    created = payload.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        return InvalidInput(field="created", reason="missing Unix time")
    data = payload.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return InvalidInput(field="data.object", reason="missing the event's object")
    return None


async def handle_stripe_event(
    session: AsyncSession,
    *,
    event: dict[str, Any],
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None = None,
) -> EventHandled | StripeEventFailed:
    """Apply an already verified event's effects; types without effects come back `ignored`."""
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return EventHandled(status="ignored", note=f"no effects for {event['type']} events")
    context = EventContext(
        session=session,
        event=event,
        catalog=catalog,
        now=now,
        actor=Actor(name=f"stripe:{event['id']}", source="stripe", request_id=request_id),
        stripe_client=stripe_client,
    )
    return await handler(context)


async def receive_stripe_event(
    session: AsyncSession,
    *,
    event: dict[str, Any],
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None = None,
) -> StripeEventOutcome | StripeEventFailed:
    """Store a delivered event and apply it, in the caller's transaction; duplicates do nothing.

    The row is inserted before the effects: a concurrent delivery of the same event blocks on
    its primary key until this transaction ends, then fails with a unique violation, and the
    unit of work's retry finds the event processed. SQLite takes the write lock at BEGIN.
    """
    values = _new_values(event, now=now, request_id=request_id)
    # Stored as processed and counted as an attempt in its INSERT: a failure rolls the whole
    # transaction back (and is recorded in a second one), so no other state is ever committed.
    values.update(status="processed", attempts=1, processed_at=now)
    conn = await session.connection()
    insert = _INSERT_NEW[conn.dialect.name]
    if (await conn.execute(insert, values)).first() is None:
        # Stored before: a duplicate (processed, ignored) or a retry of a failed delivery.
        row = await _lock_event(session, event["id"])
        assert row is not None, "an event that is stored stays stored"
        if row.status in ("processed", "ignored"):
            note = row.last_error
            return StripeEventOutcome(event=row, status=row.status, note=note, duplicate=True)
        return await _apply(
            session,
            row,
            event=row.payload,
            catalog=catalog,
            now=now,
            request_id=request_id,
            stripe_client=stripe_client,
        )
    result = await handle_stripe_event(
        session,
        event=event,
        catalog=catalog,
        now=now,
        request_id=request_id,
        stripe_client=stripe_client,
    )
    if isinstance(result, StripeEventFailed):
        return result
    if result.status == "ignored":
        values.update(status="ignored", last_error=result.note)
        await conn.execute(
            _SET_STATUS,
            {"event_id": event["id"], "new_status": "ignored", "new_error": result.note},
        )
    # A detached row for the answer: nothing more is written through it.
    row = StripeEvent(**values)
    return StripeEventOutcome(
        event=row, status=result.status, effects=result.effects, note=result.note
    )


async def replay_stripe_event(
    session: AsyncSession,
    *,
    event_id: str,
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None = None,
) -> StripeEventOutcome | StripeEventNotFound | StripeEventFailed:
    """Re-run a stored event through the same handler.

    Every effect is keyed by the Stripe object it pays for, so replaying a processed event
    changes nothing and reports what it had done; a failed one is applied and marked processed.
    """
    row = await _lock_event(session, event_id)
    if row is None:
        return StripeEventNotFound(event_id=event_id)
    if row.status == "failed":
        return await _apply(
            session,
            row,
            event=row.payload,
            catalog=catalog,
            now=now,
            request_id=request_id,
            stripe_client=stripe_client,
            replayed=True,
        )
    result = await handle_stripe_event(
        session,
        event=row.payload,
        catalog=catalog,
        now=now,
        request_id=request_id,
        stripe_client=stripe_client,
    )
    if isinstance(result, StripeEventFailed):
        return result
    # Its effects are keyed by the objects they pay for: running it again changed nothing, so
    # report that, not the first run's effects as if they had happened again.
    return StripeEventOutcome(
        event=row,
        status=row.status,
        note=f"already {row.status}; replaying it changed nothing",
        duplicate=True,
        replayed=True,
    )


async def record_stripe_event_failure(
    session: AsyncSession,
    *,
    failure: StripeEventFailed,
    now: datetime,
    request_id: str | None,
    event: dict[str, Any] | None = None,
) -> StripeEvent | None:
    """Store the event as failed with its error, after its effects were rolled back.

    `event`, the delivered payload, stores an event seen for the first time; a replayed one is
    already stored. A concurrent delivery may have processed the event in between: then the
    failure is not written over the success, only the attempt is counted.
    """
    row = await _lock_event(session, failure.event_id)
    if row is None:
        if event is None:
            return None
        row = _new_row(event, now=now, request_id=request_id)
        session.add(row)
    row.attempts += 1
    row.request_id = request_id
    if row.status not in ("processed", "ignored"):
        row.status = "failed"
        row.last_error = failure.reason[:MAX_ERROR_LENGTH]
    await session.flush()
    return row


async def find_stripe_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    return await session.get(StripeEvent, event_id)


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


async def _apply(
    session: AsyncSession,
    row: StripeEvent,
    *,
    event: dict[str, Any],
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None,
    replayed: bool = False,
) -> StripeEventOutcome | StripeEventFailed:
    row.attempts += 1
    row.request_id = request_id
    result = await handle_stripe_event(
        session,
        event=event,
        catalog=catalog,
        now=now,
        request_id=request_id,
        stripe_client=stripe_client,
    )
    if isinstance(result, StripeEventFailed):
        return result
    row.status = result.status
    row.last_error = result.note if result.status == "ignored" else None
    row.processed_at = now
    await session.flush()
    return StripeEventOutcome(
        event=row, status=result.status, effects=result.effects, note=result.note, replayed=replayed
    )


async def _lock_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    stmt = (
        select(StripeEvent)
        .where(StripeEvent.id == event_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def _new_row(event: dict[str, Any], *, now: datetime, request_id: str | None) -> StripeEvent:
    return StripeEvent(**_new_values(event, now=now, request_id=request_id))


def _new_values(event: dict[str, Any], *, now: datetime, request_id: str | None) -> dict[str, Any]:
    obj = event["data"]["object"]
    customer = obj.get("customer")
    if obj.get("object") == "customer":
        customer = obj.get("id")
    return {
        "id": event["id"],
        "type": event["type"],
        "created": datetime.fromtimestamp(event["created"], UTC),
        "livemode": bool(event.get("livemode", False)),
        "payload": event,
        # Never committed in this state: the same transaction sets the outcome.
        "status": "received",
        "attempts": 0,
        "last_error": None,
        "request_id": request_id,
        "stripe_customer_id": object_id(customer),
        "stripe_object_id": object_id(obj.get("id")),
        "received_at": now,
        "processed_at": None,
    }


_EVENTS = StripeEvent.__table__
# A new event is stored by one statement; an id stored before (by a concurrent delivery too,
# once it commits: PostgreSQL waits for it) inserts nothing and returns no row.
_INSERT_NEW = {
    name: dialect_insert(_EVENTS)
    .on_conflict_do_nothing(index_elements=[_EVENTS.c.id])
    .returning(_EVENTS.c.id)
    for name, dialect_insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}
_SET_STATUS = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(status=bindparam("new_status"), last_error=bindparam("new_error"))
)
