"""Mutations of entitlements: usage reported by the product, overrides set by support."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry import Info, Private

from resolvers import models
from resolvers.entitlements import overrides, usage
from schema.context import Context
from schema.entitlements import Entitlement, EntitlementOverride
from schema.errors import (
    IdempotencyConflict,
    LimitExceeded,
    NoAccess,
    UnknownFeature,
    UserNotFound,
)
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import user_ref, write_for
from schema.permissions import SPEND, SUPPORT
from schema.results import answer, written_once
from schema.users import User


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

    @classmethod
    def of(cls, recorded: usage.UsageRecorded) -> EntitlementUsage:
        return cls(
            user=User(row=recorded.user),
            entitlement=Entitlement.of(recorded.entitlement),
            quantity=recorded.event.quantity,
            replayed=recorded.replayed,
        )


@strawberry.type
class EntitlementOverrideChange:
    user: User
    override: EntitlementOverride
    entitlement: Entitlement = strawberry.field(description="As it stands with the override.")
    replayed: bool
    # The override's row, which the compiled executor's EntitlementOverride fields read.
    override_row: Private[models.EntitlementOverride]

    @classmethod
    def of(cls, overridden: overrides.OverrideSet) -> EntitlementOverrideChange:
        return cls(
            user=User(row=overridden.user),
            override=EntitlementOverride.from_row(overridden.override),
            entitlement=Entitlement.of(overridden.entitlement),
            replayed=overridden.replayed,
            override_row=overridden.override,
        )


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
        permission_classes=[SPEND],
        description="Check a feature's limit and count its usage in one step: all of the "
        "quantity or none. Same idempotencyKey, counted once.",
    )
    async def record_usage(self, info: Info, input: RecordUsageInput) -> RecordUsageResult:
        return await written_once(info, lambda ctx: run_record_usage(ctx, input))

    @strawberry.mutation(
        permission_classes=[SUPPORT],
        description="Override the plan for one feature of one user (support): grant, revoke "
        "or set a limit, optionally until expiresAt. Audited like every change.",
    )
    async def set_entitlement_override(
        self, info: Info, input: SetEntitlementOverrideInput
    ) -> SetEntitlementOverrideResult:
        return await written_once(info, lambda ctx: run_set_entitlement_override(ctx, input))


async def run_record_usage(ctx: Context, input: RecordUsageInput) -> RecordUsageResult:
    """The write of recordUsage, shared with the compiled executor (gateway.compiled.writes)."""
    report: dict[str, Any] = {
        "feature": input.feature,
        "quantity": input.quantity,
        "actor": ctx.spend_actor(),
        "now": ctx.clock(),
        "catalog": ctx.catalog,
        "idempotency_key": input.idempotency_key,
    }
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: usage.record_usage(session, user=user, **report),
        lambda statements, user: usage.record_usage_alone(statements, user=user, **report),
    )
    return answer(result, EntitlementUsage.of)


async def run_set_entitlement_override(
    ctx: Context, input: SetEntitlementOverrideInput
) -> SetEntitlementOverrideResult:
    """The write of setEntitlementOverride, shared with the compiled executor."""
    now = ctx.clock()
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: overrides.set_entitlement_override(
            session,
            user=user,
            feature=input.feature,
            has_access=input.has_access,
            limit=input.limit,
            reason=input.reason,
            actor=ctx.actor("support"),
            now=now,
            catalog=ctx.catalog,
            expires_at=input.expires_at,
            idempotency_key=input.idempotency_key,
        ),
    )
    return answer(result, EntitlementOverrideChange.of)
