"""The Mutation root: check the role, turn input into resolver arguments, map the result."""

from __future__ import annotations

from typing import Annotated, Any

import strawberry
from strawberry import Info
from strawberry.scalars import JSON

from resolvers import users
from resolvers.billing import checkout, deliveries
from resolvers.errors import Failure, InvalidInput
from resolvers.insights import analytics
from resolvers.ledger import credits, tiers
from resolvers.users import UserRef
from schema.billing import (
    BillingPortalSession,
    CheckoutSession,
    StartCheckoutInput,
    WebhookEventReplay,
)
from schema.changes import TierChange
from schema.context import VIEWER, Context
from schema.credits import CreditEvent
from schema.entitlement_mutations import EntitlementMutations
from schema.errors import (
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    NoStripeCustomer,
    PaymentProviderError,
    PaymentsNotConfigured,
    UnknownTier,
    UserNotFound,
    WebhookEventFailed,
    WebhookEventNotFound,
)
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import (
    ConsumeCreditsInput,
    GrantCreditsInput,
    SetTierInput,
    UpsertUserInput,
    user_ref,
    write_for,
)
from schema.insights import TrackedEvent
from schema.permissions import CHECKOUT, PORTAL, SERVICE, SPEND, SUPPORT, TRACK
from schema.results import answer, written_once
from schema.users import User


@strawberry.type
class CreditChange:
    user: User
    event: CreditEvent
    replayed: bool

    @classmethod
    def of(cls, changed: credits.CreditChanged) -> CreditChange:
        return cls(
            user=User(row=changed.user),
            event=CreditEvent.from_row(changed.event),
            replayed=changed.replayed,
        )


@strawberry.type
class TierUpdate:
    user: User
    change: TierChange | None = strawberry.field(
        description="Null when the user already had the tier: nothing was written."
    )
    replayed: bool

    @classmethod
    def of(cls, updated: tiers.TierSet) -> TierUpdate:
        change = TierChange.from_row(updated.change) if updated.change else None
        return cls(user=User(row=updated.user), change=change, replayed=updated.replayed)


@strawberry.type
class UserUpsert:
    user: User
    created: bool

    @classmethod
    def of(cls, upserted: users.UserUpserted) -> UserUpsert:
        return cls(user=User(row=upserted.user), created=upserted.created)


CreditChangeResult = Annotated[
    CreditChange
    | InsufficientCredits
    | UserNotFound
    | InvalidInputError
    | IdempotencyConflict
    | HoldNotFound
    | HoldNotActive
    | HoldExpired,
    strawberry.union("CreditChangeResult"),
]
SetTierResult = Annotated[
    TierUpdate | UserNotFound | UnknownTier | InvalidInputError | IdempotencyConflict,
    strawberry.union("SetTierResult"),
]
UpsertUserResult = Annotated[
    UserUpsert | InvalidInputError | UnknownTier, strawberry.union("UpsertUserResult")
]


@strawberry.input
class TrackEventInput:
    name: str
    session_id: str | None = None
    properties: JSON | None = None
    email: str | None = strawberry.field(
        default=None, description="Staff only: the customer the event is about."
    )
    user_id: strawberry.ID | None = strawberry.field(
        default=None, description="Staff only: the customer the event is about."
    )


ReplayWebhookEventResult = Annotated[
    WebhookEventReplay | WebhookEventNotFound | WebhookEventFailed | InvalidInputError,
    strawberry.union("ReplayWebhookEventResult"),
]
CheckoutResult = Annotated[
    CheckoutSession
    | PaymentsNotConfigured
    | PaymentProviderError
    | UserNotFound
    | UnknownTier
    | InvalidInputError,
    strawberry.union("CheckoutResult"),
]
BillingPortalResult = Annotated[
    BillingPortalSession
    | NoStripeCustomer
    | PaymentsNotConfigured
    | PaymentProviderError
    | UserNotFound
    | InvalidInputError,
    strawberry.union("BillingPortalResult"),
]
TrackEventResult = Annotated[
    TrackedEvent | InvalidInputError | UserNotFound, strawberry.union("TrackEventResult")
]


@strawberry.type
class Mutation(EntitlementMutations):
    @strawberry.mutation(
        permission_classes=[SUPPORT],
        description="Give a user credits (support). Same idempotencyKey, same result.",
    )
    async def grant_credits(self, info: Info, input: GrantCreditsInput) -> CreditChangeResult:
        return await written_once(info, lambda ctx: run_grant_credits(ctx, input))

    @strawberry.mutation(
        permission_classes=[SPEND],
        description="Spend a user's credits, all or nothing. Same idempotencyKey, spent once.",
    )
    async def consume_credits(self, info: Info, input: ConsumeCreditsInput) -> CreditChangeResult:
        return await written_once(info, lambda ctx: run_consume_credits(ctx, input))

    @strawberry.mutation(permission_classes=[SUPPORT], description="Reset a user's tier (support).")
    async def set_tier(self, info: Info, input: SetTierInput) -> SetTierResult:
        return await written_once(info, lambda ctx: run_set_tier(ctx, input))

    @strawberry.mutation(
        permission_classes=[SERVICE],
        description="Tell the gateway about a user of the main app (creates or updates).",
    )
    async def upsert_user(self, info: Info, input: UpsertUserInput) -> UpsertUserResult:
        ctx: Context = info.context
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
        return answer(result, UserUpsert.of)

    @strawberry.mutation(
        permission_classes=[TRACK],
        description="Record a CRO event (cta_upgrade_click, premium_overlay_impression, "
        "credit_purchase_completed or a configured name); the overlay once per session.",
    )
    async def track_event(self, info: Info, input: TrackEventInput) -> TrackEventResult:
        ctx: Context = info.context
        ref: UserRef | InvalidInput | None = None
        if ctx.principal is not None and ctx.principal.role == VIEWER:
            ref = _own_or_named_user(ctx, input.email, input.user_id)
        elif input.email is not None or input.user_id is not None:
            # Support records what an emitter missed (runbook section 4) for the customer.
            ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return answer(ref, TrackedEvent.of)
        user, now = ref, ctx.clock()
        result = await ctx.db.write(
            lambda session: analytics.track_event(
                session,
                name=input.name,
                session_id=input.session_id,
                properties=input.properties,
                user=user,
                allowed_names=ctx.analytics_events,
                now=now,
                request_id=ctx.request_id,
            )
        )
        return answer(result, TrackedEvent.of)

    @strawberry.mutation(
        permission_classes=[SUPPORT],
        description="Run a stored Stripe event again through the same handler (idempotent).",
    )
    async def replay_webhook_event(self, info: Info, id: strawberry.ID) -> ReplayWebhookEventResult:
        ctx: Context = info.context
        result = await deliveries.replay_stripe_event(
            ctx.db,
            event_id=str(id),
            catalog=ctx.catalog,
            now=ctx.clock(),
            request_id=ctx.request_id,
            stripe_client=ctx.stripe,
        )
        return answer(result, WebhookEventReplay.from_outcome)

    @strawberry.mutation(
        permission_classes=[CHECKOUT],
        description="A Stripe Checkout URL for a credit pack or a tier (the viewer's own; "
        "support may name the user).",
    )
    async def start_checkout(self, info: Info, input: StartCheckoutInput) -> CheckoutResult:
        ctx: Context = info.context
        ref = _own_or_named_user(ctx, input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return answer(ref, CheckoutSession.from_started)
        now = ctx.clock()
        # Stripe is called with no transaction open; the new customer id is stored after.
        async with ctx.db.read() as session:
            result: checkout.CheckoutStarted | Failure = await checkout.start_checkout(
                session,
                user=ref,
                catalog=ctx.catalog,
                stripe_client=ctx.stripe,
                app_base_url=ctx.app_base_url,
                now=now,
                pack_code=input.pack,
                tier_code=input.tier,
                currency=input.currency,
                locale=input.locale,
            )
        if isinstance(result, checkout.CheckoutStarted) and result.new_customer:
            started = result
            result = await ctx.db.write(
                lambda session: checkout.remember_stripe_customer(session, started=started, now=now)
            )
        return answer(result, CheckoutSession.from_started)

    @strawberry.mutation(
        permission_classes=[PORTAL],
        description="A Stripe Billing Portal URL for the viewer's subscription and invoices "
        "(support names the user).",
    )
    async def open_billing_portal(
        self,
        info: Info,
        return_url: str | None = None,
        email: str | None = None,
        user_id: strawberry.ID | None = None,
    ) -> BillingPortalResult:
        ctx: Context = info.context
        ref = _own_or_named_user(ctx, email, user_id)
        if isinstance(ref, InvalidInput):
            return answer(ref, BillingPortalSession.from_opened)
        async with ctx.db.read() as session:
            result = await checkout.open_billing_portal(
                session,
                user=ref,
                stripe_client=ctx.stripe,
                app_base_url=ctx.app_base_url,
                return_url=return_url,
            )
        return answer(result, BillingPortalSession.from_opened)


def _own_or_named_user(
    ctx: Context, email: str | None, user_id: strawberry.ID | None
) -> UserRef | InvalidInput:
    """Viewers act on their own account; staff name the user."""
    principal = ctx.principal
    if principal is not None and principal.role == VIEWER:
        if email is not None or user_id is not None:
            return InvalidInput(field="email", reason="viewers act for themselves only")
        assert principal.user_id is not None
        return UserRef(user_id=principal.user_id)
    return user_ref(email, user_id)


# The writes of the credit and tier mutations: the Strawberry resolvers above and the compiled
# executor (gateway.compiled.writes) both call these, once per request (see written_once).


async def run_grant_credits(ctx: Context, input: GrantCreditsInput) -> CreditChangeResult:
    now = ctx.clock()
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: credits.grant_ai_credits(
            session,
            user=user,
            amount=input.amount,
            reason=input.reason,
            actor=ctx.actor("support"),
            now=now,
            expires_at=input.expires_at,
            idempotency_key=input.idempotency_key,
            catalog=ctx.catalog,
        ),
    )
    return answer(result, CreditChange.of)


async def run_consume_credits(ctx: Context, input: ConsumeCreditsInput) -> CreditChangeResult:
    spend: dict[str, Any] = {
        "amount": input.amount,
        "reason": input.reason,
        "actor": ctx.spend_actor(),
        "now": ctx.clock(),
        "idempotency_key": input.idempotency_key,
    }
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: credits.consume_credits(
            session, user=user, catalog=ctx.catalog, **spend
        ),
        lambda statements, user: credits.consume_credits_alone(statements, user=user, **spend),
    )
    return answer(result, CreditChange.of)


async def run_set_tier(ctx: Context, input: SetTierInput) -> SetTierResult:
    now = ctx.clock()
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: tiers.set_tier(
            session,
            user=user,
            tier=input.tier,
            reason=input.reason,
            actor=ctx.actor("support"),
            now=now,
            catalog=ctx.catalog,
            idempotency_key=input.idempotency_key,
        ),
    )
    return answer(result, TierUpdate.of)
