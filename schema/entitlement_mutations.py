"""Mutations of entitlements: usage reported by the product, overrides set by support."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from strawberry import Info

from resolvers.entitlements import overrides, usage
from resolvers.errors import Failure, InvalidInput
from schema import permissions
from schema.context import Context
from schema.entitlements import Entitlement, EntitlementOverride
from schema.errors import (
    IdempotencyConflict,
    LimitExceeded,
    NoAccess,
    UnknownFeature,
    UserNotFound,
    from_failure,
)
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import user_ref
from schema.types import User


@strawberry.input(description="Name the user by exactly one of email or userId.")
class RecordUsageInput:
    feature: str
    quantity: int = strawberry.field(
        default=1, description="Uses to count; negative gives usage back (never below 0)."
    )
    email: str | None = None
    user_id: strawberry.ID | None = None
    idempotency_key: str | None = None


@strawberry.input(description="Name the user by exactly one of email or userId.")
class SetEntitlementOverrideInput:
    feature: str
    has_access: bool
    reason: str
    limit: int | None = strawberry.field(
        default=None, description="Null: no limit. Only with hasAccess: true."
    )
    expires_at: datetime | None = strawberry.field(
        default=None, description="Null: until changed; after it, the plan applies again."
    )
    email: str | None = None
    user_id: strawberry.ID | None = None
    idempotency_key: str | None = None


@strawberry.type
class EntitlementUsage:
    user: User
    entitlement: Entitlement = strawberry.field(description="As it stands after this usage.")
    quantity: int = strawberry.field(description="What was counted (a give-back stops at 0).")
    replayed: bool


@strawberry.type
class EntitlementOverrideChange:
    user: User
    override: EntitlementOverride
    entitlement: Entitlement = strawberry.field(description="As it stands with the override.")
    replayed: bool


RecordUsageResult = Annotated[
    EntitlementUsage
    | LimitExceeded
    | NoAccess
    | UnknownFeature
    | UserNotFound
    | InvalidInputError
    | IdempotencyConflict,
    strawberry.union("RecordUsageResult"),
]
SetEntitlementOverrideResult = Annotated[
    EntitlementOverrideChange
    | UnknownFeature
    | UserNotFound
    | InvalidInputError
    | IdempotencyConflict,
    strawberry.union("SetEntitlementOverrideResult"),
]


@strawberry.type
class EntitlementMutations:
    @strawberry.mutation(
        permission_classes=[permissions.SPEND],
        description="Check a feature's limit and count its usage in one step: all of the "
        "quantity or none. Same idempotencyKey, counted once.",
    )
    async def record_usage(self, info: Info, input: RecordUsageInput) -> RecordUsageResult:
        ctx: Context = info.context
        ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return from_failure(ref)  # type: ignore[return-value]
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: usage.record_usage(
                session,
                user=ref,
                feature=input.feature,
                quantity=input.quantity,
                actor=ctx.spend_actor(),
                now=now,
                catalog=ctx.catalog,
                idempotency_key=input.idempotency_key,
            )
        )
        if isinstance(result, Failure):
            return from_failure(result)  # type: ignore[return-value]
        return EntitlementUsage(
            user=User(row=result.user),
            entitlement=Entitlement.of(result.entitlement),
            quantity=result.event.quantity,
            replayed=result.replayed,
        )

    @strawberry.mutation(
        permission_classes=[permissions.SUPPORT],
        description="Override the plan for one feature of one user (support): grant, revoke "
        "or set a limit, optionally until expiresAt. Audited like every change.",
    )
    async def set_entitlement_override(
        self, info: Info, input: SetEntitlementOverrideInput
    ) -> SetEntitlementOverrideResult:
        ctx: Context = info.context
        ref = user_ref(input.email, input.user_id)
        if isinstance(ref, InvalidInput):
            return from_failure(ref)  # type: ignore[return-value]
        now = ctx.clock()
        result = await ctx.db.write(
            lambda session: overrides.set_entitlement_override(
                session,
                user=ref,
                feature=input.feature,
                has_access=input.has_access,
                limit=input.limit,
                reason=input.reason,
                actor=ctx.actor("support"),
                now=now,
                catalog=ctx.catalog,
                expires_at=input.expires_at,
                idempotency_key=input.idempotency_key,
            )
        )
        if isinstance(result, Failure):
            return from_failure(result)  # type: ignore[return-value]
        return EntitlementOverrideChange(
            user=User(row=result.user),
            override=EntitlementOverride.from_row(result.override),
            entitlement=Entitlement.of(result.entitlement),
            replayed=result.replayed,
        )
