"""The Mutation root: check the role, turn input into resolver arguments, map the result."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry import Info
from strawberry.scalars import JSON

from resolvers import analytics, credits, tiers, users
from resolvers.errors import Failure, InvalidInput
from schema import permissions
from schema.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    UnknownTier,
    UserNotFound,
    from_failure,
)
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import (
    ConsumeCreditsInput,
    GrantCreditsInput,
    SetTierInput,
    UpsertUserInput,
    user_ref,
)
from schema.insights import TrackedEvent
from schema.types import CreditEvent, TierChange, User


@strawberry.type
class CreditChange:
    user: User
    event: CreditEvent
    replayed: bool


@strawberry.type
class TierUpdate:
    user: User
    change: TierChange | None = strawberry.field(
        description="Null when the user already had the tier: nothing was written."
    )
    replayed: bool


@strawberry.type
class UserUpsert:
    user: User
    created: bool


CreditChangeResult = Annotated[
    CreditChange | InsufficientCredits | UserNotFound | InvalidInputError | IdempotencyConflict,
    strawberry.union("CreditChangeResult"),
]
SetTierResult = Annotated[
    TierUpdate | UserNotFound | UnknownTier | InvalidInputError | IdempotencyConflict,
    strawberry.union("SetTierResult"),
]
UpsertUserResult = Annotated[
    UserUpsert | InvalidInputError | UnknownTier, strawberry.union("UpsertUserResult")
]


def credit_result(result: credits.CreditChanged | Failure) -> CreditChangeResult:
    if isinstance(result, Failure):
        return from_failure(result)  # type: ignore[return-value]
    return CreditChange(
        user=User(row=result.user),
        event=CreditEvent.from_row(result.event),
        replayed=result.replayed,
    )


@strawberry.input
class TrackEventInput:
    name: str
    session_id: str | None = None
    properties: JSON | None = None


TrackEventResult = Annotated[TrackedEvent | InvalidInputError, strawberry.union("TrackEventResult")]


@strawberry.type
class Mutation:
    @strawberry.mutation(
        permission_classes=[permissions.SUPPORT],
        description="Give a user credits (support). Same idempotencyKey, same result.",
    )
    async def grant_credits(self, info: Info, input: GrantCreditsInput) -> CreditChangeResult:
        ctx = info.context
        ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return from_failure(ref)  # type: ignore[return-value]
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: credits.grant_ai_credits(
                session,
                user=ref,
                amount=input.amount,
                reason=input.reason,
                actor=ctx.actor("support"),
                now=now,
                expires_at=input.expires_at,
                idempotency_key=input.idempotency_key,
            )
        )
        return credit_result(result)

    @strawberry.mutation(
        permission_classes=[permissions.SPEND],
        description="Spend a user's credits, all or nothing. Same idempotencyKey, spent once.",
    )
    async def consume_credits(self, info: Info, input: ConsumeCreditsInput) -> CreditChangeResult:
        ctx = info.context
        ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return from_failure(ref)  # type: ignore[return-value]
        source = "usage" if ctx.principal.role == "service" else "support"
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: credits.consume_credits(
                session,
                user=ref,
                amount=input.amount,
                reason=input.reason,
                actor=ctx.actor(source),
                now=now,
                catalog=ctx.catalog,
                idempotency_key=input.idempotency_key,
            )
        )
        return credit_result(result)

    @strawberry.mutation(
        permission_classes=[permissions.SUPPORT], description="Reset a user's tier (support)."
    )
    async def set_tier(self, info: Info, input: SetTierInput) -> SetTierResult:
        ctx = info.context
        ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return from_failure(ref)  # type: ignore[return-value]
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: tiers.set_tier(
                session,
                user=ref,
                tier=input.tier,
                reason=input.reason,
                actor=ctx.actor("support"),
                now=now,
                catalog=ctx.catalog,
                idempotency_key=input.idempotency_key,
            )
        )
        if isinstance(result, Failure):
            return from_failure(result)  # type: ignore[return-value]
        change = TierChange.from_row(result.change) if result.change else None
        return TierUpdate(user=User(row=result.user), change=change, replayed=result.replayed)

    @strawberry.mutation(
        permission_classes=[permissions.SERVICE],
        description="Tell the gateway about a user of the main app (creates or updates).",
    )
    async def upsert_user(self, info: Info, input: UpsertUserInput) -> UpsertUserResult:
        ctx = info.context
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: users.upsert_user(
                session,
                email=input.email,
                catalog=ctx.catalog,
                now=now,
                external_id=input.external_id,
                locale=input.locale,
            )
        )
        if isinstance(result, Failure):
            return from_failure(result)  # type: ignore[return-value]
        return UserUpsert(user=User(row=result.user), created=result.created)

    @strawberry.mutation(
        permission_classes=[permissions.TRACK],
        description="Record a CRO event (cta_upgrade_click, premium_overlay_impression, "
        "credit_purchase_completed or a configured name); the overlay once per session.",
    )
    async def track_event(self, info: Info, input: TrackEventInput) -> TrackEventResult:
        ctx = info.context
        principal = ctx.principal
        user_id = principal.user_id if principal is not None else None
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: analytics.track_event(
                session,
                name=input.name,
                session_id=input.session_id,
                properties=input.properties,
                user_id=user_id,
                allowed_names=ctx.analytics_events,
                now=now,
                request_id=ctx.request_id,
            )
        )
        if isinstance(result, Failure):
            return from_failure(result)  # type: ignore[return-value]
        return TrackedEvent(event=result.event, recorded=result.recorded)  # type: ignore[arg-type]
