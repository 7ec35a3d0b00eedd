"""A Stripe event delivered or replayed: stored, dispatched to its handler, applied or recorded.

`receive_stripe_event` (the webhook route) and `replay_stripe_event` (the CLI, GraphQL) are the
two ways in, and both run in the caller's unit of work. The event is stored and its effects are
applied in one transaction, so a concurrent second delivery cannot apply them again; when that
fails (a handler's `StripeEventFailed`, or a crash) the effects roll back with it and the failure
is recorded in a second transaction, so the event stays stored and replayable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from stripe import StripeClient

from resolvers.billing import money, payments
from resolvers.billing.payloads import EventContext, EventHandled, Handler, as_dict, object_id
from resolvers.billing.subscriptions import subscription_changed
from resolvers.catalog.model import Catalog
from resolvers.errors import StripeEventFailed, StripeEventNotFound
from resolvers.ledger.entries import Actor
from resolvers.ledger.idempotency import KEY_LOCK, lock_key, note_key_locked, scoped_key
from resolvers.models import StripeEvent
from resolvers.prepared import execute
from resolvers.unit_of_work import DatabaseUnreachable, UnitOfWork

log = logging.getLogger("entitlements.stripe")

MAX_ERROR_LENGTH = 2000
HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": money.checkout_completed,
    "checkout.session.async_payment_succeeded": money.checkout_completed,
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_changed,
    "invoice.paid": money.invoice_paid,
    "charge.refunded": money.charge_refunded,
    "charge.dispute.created": money.dispute_created,
}


# The idempotency key of the grant an event pays for, by the object paid for: its lock is taken
# by the statement that stores the event (PostgreSQL), one round trip fewer than its own.
GRANT_KEYS: dict[str, Callable[[str], str]] = {
    "checkout.session.completed": payments.checkout_key,
    "checkout.session.async_payment_succeeded": payments.checkout_key,
    "invoice.paid": payments.invoice_key,
}


@dataclass(frozen=True)
class StripeEventOutcome:
    event: StripeEvent
    status: str  # processed | ignored
    effects: tuple[str, ...] = ()
    note: str | None = None
    duplicate: bool = False  # already processed before this delivery; nothing was done
    replayed: bool = False


Result = StripeEventOutcome | StripeEventFailed
R = TypeVar("R")


@dataclass(frozen=True)
class _Run:
    """What every step of one delivery or replay shares."""

    catalog: Catalog
    now: datetime
    request_id: str | None
    stripe_client: StripeClient | None

    async def handle(
        self, session: AsyncSession, event: dict[str, Any]
    ) -> EventHandled | StripeEventFailed:
        """The event's effects alone; types without effects come back `ignored`."""
        handler = HANDLERS.get(event["type"])
        if handler is None:
            return EventHandled(status="ignored", note=f"no effects for {event['type']} events")
        actor = Actor(name=f"stripe:{event['id']}", source="stripe", request_id=self.request_id)
        context = EventContext(session, event, self.catalog, self.now, actor, self.stripe_client)
        return await handler(context)


async def receive_stripe_event(
    db: UnitOfWork,
    *,
    event: dict[str, Any],
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None = None,
) -> Result:
    """Store a verified delivery and apply it; a duplicate is reported and changes nothing.

    An outcome means the effects are committed; a `StripeEventFailed` means none are, and the
    event is stored as failed. A database that cannot be reached raises, with nothing stored.
    """
    run = _Run(catalog, now, request_id, stripe_client)
    result = await _apply_or_record(
        db, lambda s: _store_and_apply(s, run, event), run, event["id"], event=event
    )
    _log_outcome(event["id"], event["type"], result)
    return result


async def replay_stripe_event(
    db: UnitOfWork,
    *,
    event_id: str,
    catalog: Catalog,
    now: datetime,
    request_id: str | None,
    stripe_client: StripeClient | None = None,
) -> Result | StripeEventNotFound:
    """Re-run a stored event through the same handler; a failure is recorded like a delivery's.

    Every effect is keyed by the Stripe object it pays for, so replaying a processed event
    changes nothing and reports what it had done; a failed one is applied and marked processed.
    """
    run = _Run(catalog, now, request_id, stripe_client)
    result = await _apply_or_record(db, lambda s: _rerun(s, run, event_id), run, event_id)
    if not isinstance(result, StripeEventNotFound):
        _log_outcome(event_id, "replay", result)
    return result


def _internal_error(exc: Exception, request_id: str | None) -> str:
    """What Stripe, the stored event and GraphQL may see of a crash: never SQL or parameters.

    The traceback is in the log under the request id.
    """
    return f"internal error ({type(exc).__name__}); see the log for request {request_id}"


async def _apply_or_record(
    db: UnitOfWork,
    work: Callable[[AsyncSession], Awaitable[R]],
    run: _Run,
    event_id: str,
    *,
    event: dict[str, Any] | None = None,
) -> R | StripeEventFailed:
    """Apply in one transaction; a failure (value or crash) is recorded in a second one.

    The effects roll back with the first transaction, so the failure must be written apart.
    """
    result: R | StripeEventFailed
    try:
        result = await db.write(work)
    except DatabaseUnreachable:
        raise  # nothing was stored, and nothing can be: Stripe delivers it again
    except Exception as exc:  # a bug or a database fault: the effects were rolled back
        log.exception("stripe event %s: handler raised", event_id)
        result = StripeEventFailed(event_id=event_id, reason=_internal_error(exc, run.request_id))
    if isinstance(result, StripeEventFailed):
        failure = result
        try:
            await db.write(lambda s: _record_failure(s, failure, run, event))
        except Exception:  # the answer is a failure either way, and Stripe delivers it again
            log.exception("stripe event %s: recording its failure failed too", event_id)
    return result


async def _store_and_apply(session: AsyncSession, run: _Run, event: dict[str, Any]) -> Result:
    """Store a delivered event and apply it, in one transaction; duplicates do nothing.

    The row is inserted before the effects: a concurrent delivery of the same event blocks on
    its primary key until this transaction ends, then fails with a unique violation, and the
    unit of work's retry finds the event processed. SQLite takes the write lock at BEGIN.
    """
    values = _new_values(event, now=run.now, request_id=run.request_id)
    # Stored as processed and counted as an attempt in its INSERT: a failure rolls the whole
    # transaction back (and is recorded in a second one), so no other state is ever committed.
    values.update(status="processed", attempts=1, processed_at=run.now)
    conn = await session.connection()
    stmt = _INSERT_NEW[conn.dialect.name]
    params = values
    if (key := _grant_key(event)) is not None and conn.dialect.name == "postgresql":
        # Key, then event row, then user: the order of every path here (`_rerun` too).
        stmt, params = _INSERT_NEW_LOCKING_KEY, {**values, "scoped_key": scoped_key(key)}
        note_key_locked(session, conn, key)
    if (await execute(session, stmt, params)).first() is None:
        # Stored before: a duplicate (processed, ignored) or a retry of a failed delivery.
        row = await _lock_event(session, event["id"])
        assert row is not None, "an event that is stored stays stored"
        if row.status in ("processed", "ignored"):
            note = row.last_error
            return StripeEventOutcome(event=row, status=row.status, note=note, duplicate=True)
        return await _apply(session, run, row)
    result = await run.handle(session, event)
    if isinstance(result, StripeEventFailed):
        return result
    if result.status == "ignored":
        values.update(status="ignored", last_error=result.note)
        await execute(
            session,
            _SET_STATUS,
            {"event_id": event["id"], "new_status": "ignored", "new_error": result.note},
        )
    # A detached row for the answer: nothing more is written through it.
    row = StripeEvent(**values)
    return StripeEventOutcome(
        event=row, status=result.status, effects=result.effects, note=result.note
    )


async def _rerun(session: AsyncSession, run: _Run, event_id: str) -> Result | StripeEventNotFound:
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        # A delivery takes the grant's key lock before the event row: so does a replay, or the
        # two would wait on each other.
        stored = (await conn.execute(_STORED_PAYLOAD, {"event_id": event_id})).first()
        if stored is not None:
            await lock_key(session, _grant_key(stored.payload))
    row = await _lock_event(session, event_id)
    if row is None:
        return StripeEventNotFound(event_id=event_id)
    if row.status == "failed":
        return await _apply(session, run, row, replayed=True)
    result = await run.handle(session, row.payload)
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


async def _apply(
    session: AsyncSession, run: _Run, row: StripeEvent, *, replayed: bool = False
) -> Result:
    """Apply a stored event that has not been applied yet (a failed one, retried or replayed)."""
    row.attempts += 1
    row.request_id = run.request_id
    result = await run.handle(session, row.payload)
    if isinstance(result, StripeEventFailed):
        return result
    row.status = result.status
    row.last_error = result.note if result.status == "ignored" else None
    row.processed_at = run.now
    await session.flush()
    return StripeEventOutcome(
        event=row, status=result.status, effects=result.effects, note=result.note, replayed=replayed
    )


async def _record_failure(
    session: AsyncSession, failure: StripeEventFailed, run: _Run, event: dict[str, Any] | None
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
        row = StripeEvent(**_new_values(event, now=run.now, request_id=run.request_id))
        session.add(row)
    row.attempts += 1
    row.request_id = run.request_id
    if row.status not in ("processed", "ignored"):
        row.status = "failed"
        row.last_error = failure.reason[:MAX_ERROR_LENGTH]
    await session.flush()
    return row


async def _lock_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    stmt = (
        select(StripeEvent)
        .where(StripeEvent.id == event_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def _grant_key(event: dict[str, Any]) -> str | None:
    key_of = GRANT_KEYS.get(event.get("type"))
    obj = as_dict(as_dict(event.get("data")).get("object"))
    paid_for = object_id(obj.get("id"))
    return key_of(paid_for) if key_of is not None and paid_for is not None else None


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


def _log_outcome(event_id: str, event_type: str, result: Result) -> None:
    # One structured line, in the shape the gateway's JSON log formatter reads from `fields`.
    fields: dict[str, Any] = {"event": "stripe_event", "stripe_event_id": event_id}
    if isinstance(result, StripeEventFailed):
        fields.update(type=event_type, status="failed", error=result.reason)
        log.error("stripe_event", extra={"fields": fields})
        return
    fields.update(
        type=event_type,
        status=result.status,
        duplicate=result.duplicate,
        replayed=result.replayed,
        attempts=result.event.attempts,
        effects=list(result.effects),
        note=result.note,
    )
    log.info("stripe_event", extra={"fields": fields})


_EVENTS = StripeEvent.__table__
# A new event is stored by one statement; an id stored before (by a concurrent delivery too,
# once it commits: PostgreSQL waits for it) inserts nothing and returns no row.
_INSERT_NEW = {
    name: dialect_insert(_EVENTS)
    .on_conflict_do_nothing(index_elements=[_EVENTS.c.id])
    .returning(_EVENTS.c.id)
    for name, dialect_insert in (("postgresql", postgresql_insert), ("sqlite", sqlite_insert))
}
_INSERT_NEW_LOCKING_KEY = (
    postgresql_insert(_EVENTS)
    .from_select(
        [c.name for c in _EVENTS.c],
        # KEY_LOCK gates the one row: it is granted before the row is inserted.
        select(*(bindparam(c.name, type_=c.type) for c in _EVENTS.c)).where(KEY_LOCK.is_not(None)),
    )
    .on_conflict_do_nothing(index_elements=[_EVENTS.c.id])
    .returning(_EVENTS.c.id)
)
_STORED_PAYLOAD = select(_EVENTS.c.payload).where(_EVENTS.c.id == bindparam("event_id"))
_SET_STATUS = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"))
    .values(status=bindparam("new_status"), last_error=bindparam("new_error"))
)
