"""Types of Stripe billing: stored webhook events, replays, Checkout and Billing Portal sessions."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry
from strawberry.scalars import JSON

from resolvers.billing import checkout, deliveries
from resolvers.billing import events as billing
from resolvers.models import StripeEvent
from schema.connections import PageInfo, cursor_value, encode_cursor


@strawberry.enum
class WebhookEventStatus(Enum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


@strawberry.type(description="A Stripe event as received and stored, before and after acting.")
class WebhookEvent:
    id: strawberry.ID
    type: str
    status: WebhookEventStatus
    created: datetime = strawberry.field(description="Stripe's `created` (whole seconds).")
    received_at: datetime
    processed_at: datetime | None
    attempts: int
    last_error: str | None
    livemode: bool
    request_id: str | None
    stripe_customer_id: str | None
    stripe_object_id: str | None
    payload: JSON

    @classmethod
    def from_row(cls, row: StripeEvent) -> WebhookEvent:
        return cls(
            id=strawberry.ID(row.id),
            type=row.type,
            status=WebhookEventStatus(row.status),
            created=row.created,
            received_at=row.received_at,
            processed_at=row.processed_at,
            attempts=row.attempts,
            last_error=row.last_error,
            livemode=row.livemode,
            request_id=row.request_id,
            stripe_customer_id=row.stripe_customer_id,
            stripe_object_id=row.stripe_object_id,
            payload=row.payload,
        )


@strawberry.type
class WebhookEventEdge:
    cursor: str
    node: WebhookEvent


@strawberry.type
class WebhookEventConnection:
    edges: list[WebhookEventEdge]
    page_info: PageInfo


EVENT_CURSOR = "evt"


def event_id_from_cursor(cursor: str | None) -> str | None:
    return cursor_value(cursor, EVENT_CURSOR)


def event_connection(page: billing.StripeEventPage) -> WebhookEventConnection:
    edges = [
        WebhookEventEdge(
            cursor=encode_cursor(row.id, EVENT_CURSOR), node=WebhookEvent.from_row(row)
        )
        for row in page.events
    ]
    return WebhookEventConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_more, end_cursor=edges[-1].cursor if edges else None
        ),
    )


@strawberry.type(description="A stored event run again through the same handler.")
class WebhookEventReplay:
    event: WebhookEvent
    status: WebhookEventStatus
    effects: list[str]
    note: str | None
    replayed: bool
    changed: bool = strawberry.field(
        description="False when the event had been applied already and replaying changed nothing."
    )

    @classmethod
    def from_outcome(cls, outcome: deliveries.StripeEventOutcome) -> WebhookEventReplay:
        return cls(
            event=WebhookEvent.from_row(outcome.event),
            status=WebhookEventStatus(outcome.status),
            effects=list(outcome.effects),
            note=outcome.note,
            replayed=outcome.replayed,
            changed=not outcome.duplicate,
        )


@strawberry.type(
    description="The user's Stripe subscription as the gateway last stored it (named so that"
    " codegen tools do not take it for the GraphQL subscription root)."
)
class BillingSubscription:
    id: str = strawberry.field(description="The Stripe subscription id.")
    status: str | None
    price_id: str | None
    current_period_end: datetime | None
    trial_ends_at: datetime | None


@strawberry.type
class CheckoutSession:
    url: str
    checkout_session_id: str
    customer_id: str
    mode: str = strawberry.field(description="payment (credit pack) or subscription (tier).")

    @classmethod
    def from_started(cls, started: checkout.CheckoutStarted) -> CheckoutSession:
        return cls(
            url=started.url,
            checkout_session_id=started.checkout_session_id,
            customer_id=started.customer_id,
            mode=started.mode,
        )


@strawberry.type
class BillingPortalSession:
    url: str
    customer_id: str

    @classmethod
    def from_opened(cls, opened: checkout.BillingPortalOpened) -> BillingPortalSession:
        return cls(url=opened.url, customer_id=opened.customer_id)


@strawberry.input(description="A credit pack or a tier; staff may name the user.")
class StartCheckoutInput:
    pack: str | None = None
    tier: str | None = None
    currency: str | None = None
    locale: str | None = None
    email: str | None = None
    user_id: strawberry.ID | None = None
