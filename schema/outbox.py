"""Outgoing webhooks in GraphQL: the deliveries support reads, and per-user low-balance alerts."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry
from strawberry import Info, Private
from strawberry.scalars import JSON

from resolvers import errors as domain
from resolvers.models import parse_row_id
from resolvers.outbox import alerts, deliveries
from resolvers.outbox.deliveries import DeliveryRow, DeliveryStatus
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import Context
from schema.errors import DeliveryNotFound, UserNotFound
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import user_ref, write_for
from schema.permissions import SUPPORT
from schema.results import answer
from schema.users import User


@strawberry.enum
class OutgoingDeliveryStatus(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@strawberry.type(description="One outgoing event (Standard Webhooks) to one endpoint.")
class OutgoingDelivery:
    row: Private[DeliveryRow]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.delivery.id))

    @strawberry.field(description="The event's webhook-id: the same on every attempt.")
    def message_id(self) -> str:
        return self.row.event.message_id

    @strawberry.field(description="credits.low_balance, credits.depleted, tier.changed, …")
    def type(self) -> str:
        return self.row.event.type

    @strawberry.field
    async def user(self, info: Info) -> User | None:
        row = await info.context.loaders.user_by_id.load(self.row.event.user_id)
        return User(row=row) if row is not None else None

    @strawberry.field
    def endpoint(self) -> str:
        return self.row.delivery.endpoint

    @strawberry.field
    def status(self) -> OutgoingDeliveryStatus:
        return OutgoingDeliveryStatus(self.row.delivery.status)

    @strawberry.field
    def attempts(self) -> int:
        return self.row.delivery.attempts

    @strawberry.field(description="When a pending delivery is tried next.")
    def next_attempt_at(self) -> datetime | None:
        if self.row.delivery.status != DeliveryStatus.PENDING.value:
            return None
        return self.row.delivery.next_attempt_at

    @strawberry.field(description="The endpoint's HTTP status at the last attempt.")
    def last_status(self) -> int | None:
        return self.row.delivery.last_status

    @strawberry.field
    def last_error(self) -> str | None:
        return self.row.delivery.last_error

    @strawberry.field
    def delivered_at(self) -> datetime | None:
        return self.row.delivery.delivered_at

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.event.created_at

    @strawberry.field(description="The body sent, as JSON: {type, timestamp, data}.")
    def payload(self) -> JSON:
        return self.row.event.payload


@strawberry.type
class OutboxQuery:
    @strawberry.field(
        permission_classes=[SUPPORT],
        description="Outgoing webhook deliveries, newest first; filter by status.",
    )
    async def outgoing_deliveries(
        self,
        info: Info,
        status: OutgoingDeliveryStatus | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[OutgoingDelivery]:
        size = page_size(first)
        async with info.context.db.read() as session:
            rows = await deliveries.list_deliveries(
                session,
                status=DeliveryStatus(status.value) if status else None,
                limit=size + 1,
                before_id=decode_cursor(after),
            )
        return connection(rows, size, lambda row: OutgoingDelivery(row=row))


@strawberry.input(description="Name the user by exactly one of email or userId.")
class SetLowBalanceThresholdInput:
    threshold: int | None = strawberry.field(
        description="credits.low_balance when available credits fall below it; null: the "
        "tier's from the catalog; 0: never."
    )
    email: str | None = None
    user_id: strawberry.ID | None = None


@strawberry.type
class LowBalanceThresholdSet:
    user: User
    threshold: int | None = strawberry.field(description="The user's own; null: the tier's.")
    effective_threshold: int


SetLowBalanceThresholdResult = Annotated[
    LowBalanceThresholdSet | UserNotFound | InvalidInputError,
    strawberry.union("SetLowBalanceThresholdResult"),
]


RetryOutgoingDeliveryResult = Annotated[
    OutgoingDelivery | DeliveryNotFound, strawberry.union("RetryOutgoingDeliveryResult")
]


@strawberry.type
class OutboxMutation:
    @strawberry.mutation(
        permission_classes=[SUPPORT],
        description="Send an outgoing delivery again at the next dispatch, whatever its status "
        "(support; `entitlements deliveries retry` does the same).",
    )
    async def retry_outgoing_delivery(
        self, info: Info, id: strawberry.ID
    ) -> RetryOutgoingDeliveryResult:
        ctx: Context = info.context
        delivery_id = parse_row_id(str(id))
        now = ctx.clock()
        result: deliveries.DeliveryRow | domain.DeliveryNotFound = (
            domain.DeliveryNotFound(delivery_id=str(id)[:32])
            if delivery_id is None
            else await ctx.db.write(
                lambda session: deliveries.retry_delivery(session, delivery_id=delivery_id, now=now)
            )
        )
        return answer(result, lambda row: OutgoingDelivery(row=row))

    @strawberry.mutation(
        permission_classes=[SUPPORT],
        description="Set one user's credits.low_balance threshold (support).",
    )
    async def set_low_balance_threshold(
        self, info: Info, input: SetLowBalanceThresholdInput
    ) -> SetLowBalanceThresholdResult:
        ctx: Context = info.context
        now = ctx.clock()
        result = await write_for(
            ctx.db,
            user_ref(input.email, input.user_id),
            lambda session, ref: alerts.set_low_balance_threshold(
                session, user=ref, threshold=input.threshold, now=now
            ),
        )
        return answer(result, lambda done: _threshold_set(ctx, done))


def _threshold_set(ctx: Context, result: alerts.ThresholdSet) -> LowBalanceThresholdSet:
    tier = ctx.catalog.tier(result.user.tier)
    effective = (
        result.threshold
        if result.threshold is not None
        else (tier.low_balance_threshold if tier is not None else 0)
    )
    return LowBalanceThresholdSet(
        user=User(row=result.user), threshold=result.threshold, effective_threshold=effective
    )
