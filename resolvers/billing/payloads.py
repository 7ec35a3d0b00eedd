"""Stripe payloads as the handlers read them: the event's shape, references, times, its user.

Stripe's payload shape depends on the webhook endpoint's API version and on what was expanded:
a reference is an id or the object itself, a missing object is absent or null. These readers
take whatever came and answer None or {} rather than raise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput, StripeEventFailed
from resolvers.ledger.accounts import USERS, Account, lock_account
from resolvers.ledger.entries import Actor
from resolvers.models import parse_row_id
from resolvers.users import UserRef, normalize_email


@dataclass(frozen=True)
class EventHandled:
    status: str  # processed | ignored
    effects: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class EventContext:
    """What a handler is given: the event, the transaction it runs in, and who acts."""

    session: AsyncSession
    event: dict[str, Any]
    catalog: Catalog
    now: datetime
    actor: Actor
    stripe_client: stripe.StripeClient | None

    @property
    def obj(self) -> dict[str, Any]:
        return self.event["data"]["object"]

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.event["created"], UTC)

    def fail(self, reason: str) -> StripeEventFailed:
        return StripeEventFailed(event_id=self.event["id"], reason=reason)

    def ignore(self, note: str) -> EventHandled:
        return EventHandled(status="ignored", note=note)


Handler = Callable[[EventContext], Awaitable[EventHandled | StripeEventFailed]]


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


def object_id(value: Any) -> str | None:
    """A Stripe reference is an id, or the object itself when the field was expanded."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


async def find_event_user(
    ctx: EventContext,
    *,
    user_id: Any = None,
    customer: str | None = None,
    subscription: str | None = None,
    email: str | None = None,
    idempotency_key: str | None = None,
) -> Account | StripeEventFailed:
    """By our id (client_reference_id, metadata), else customer, subscription, email; locked.

    This is the event's one lock of the user row: the payment, ledger and tier resolvers are
    handed the account. The key the effects will use is looked up by the same statement. A
    customer id linked here is written by the next save of the account.
    """
    user = None
    if (row_id := parse_row_id(user_id)) is not None:
        user = await lock_account(
            ctx.session, UserRef(user_id=row_id), idempotency_key=idempotency_key
        )
    if user is None:
        found = await _user_id_by(ctx.session, customer, subscription, email)
        if found is None and email is None and customer and ctx.stripe_client is not None:
            try:
                remote = await ctx.stripe_client.v1.customers.retrieve_async(customer)
            except stripe.StripeError as exc:
                return ctx.fail(
                    f"fetching customer {customer} from Stripe: {exc.user_message or exc}"
                )
            email = getattr(remote, "email", None)
            found = await _user_id_by(ctx.session, None, None, email)
        if found is None:
            return ctx.fail(
                f"no user for Stripe customer {customer or '-'} (user id {user_id or '-'},"
                f" email {email or '-'}); create the user, then replay {ctx.event['id']}"
            )
        user = await lock_account(
            ctx.session, UserRef(user_id=found), idempotency_key=idempotency_key
        )
        assert user is not None, "a user found in this transaction is still there"
    if customer and user.stripe_customer_id is None:
        taken = await ctx.session.execute(
            select(USERS.c.id).where(USERS.c.stripe_customer_id == customer)
        )
        if taken.scalar_one_or_none() is None:
            user.stripe_customer_id = customer
            user.updated_at = ctx.now
    return user


async def _user_id_by(
    session: AsyncSession, customer: str | None, subscription: str | None, email: str | None
) -> int | None:
    conditions = []
    if customer:
        conditions.append(USERS.c.stripe_customer_id == customer)
    if subscription:
        conditions.append(USERS.c.stripe_subscription_id == subscription)
    if isinstance(email, str) and email:
        conditions.append(USERS.c.email == normalize_email(email))
    for condition in conditions:
        stmt = select(USERS.c.id).where(condition).order_by(USERS.c.id).limit(1)
        if (found := (await session.execute(stmt)).scalar_one_or_none()) is not None:
            return found
    return None
