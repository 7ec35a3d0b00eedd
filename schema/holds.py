"""Credit holds in GraphQL: the CreditHold type and the reserve, settle and release mutations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry import Info, Private

from resolvers.ledger import holds
from schema.context import Context
from schema.errors import (
    HoldNotActive,
    HoldNotFound,
    HoldStatus,
    IdempotencyConflict,
    InsufficientCredits,
    UserNotFound,
)
from schema.errors import InvalidInput as InvalidInputError
from schema.inputs import user_ref, write_for
from schema.mutation import CreditChange, CreditChangeResult
from schema.permissions import SPEND
from schema.results import answer, written_once
from schema.users import User


@strawberry.type(description="Credits reserved for a call priced after it ends.")
class CreditHold:
    row: Private[Any]  # a resolvers.ledger.holds.Hold or a credit_holds row
    # Set when the hold is shown as it stood at a past moment (credits(at:)).
    as_of: Private[datetime | None] = None

    @classmethod
    def of(cls, changed: holds.HoldChanged) -> CreditHold:
        return cls(row=changed.hold)

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    async def user(self, info: Info) -> User:
        return User(row=await info.context.loaders.user_by_id.load(self.row.user_id))

    @strawberry.field
    def amount(self) -> int:
        return self.row.amount

    @strawberry.field
    def reason(self) -> str:
        return self.row.reason

    @strawberry.field(description="EXPIRED from expiresAt on, whether or not the sweep has run.")
    def status(self, info: Info) -> HoldStatus:
        now = self.as_of or info.context.clock()
        if self.row.status == "active" and self.row.expires_at <= now:
            return HoldStatus.EXPIRED
        if self.as_of is not None:
            return HoldStatus.ACTIVE  # credits(at:) lists the holds active then
        return HoldStatus(self.row.status)

    @strawberry.field
    def expires_at(self) -> datetime:
        return self.row.expires_at

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field(description="What a settlement spent; null until settled.")
    def settled_amount(self) -> int | None:
        return self.row.settled_amount


@strawberry.input(description="Name the user by exactly one of email or userId.")
class ReserveCreditsInput:
    amount: int
    reason: str
    email: str | None = None
    user_id: strawberry.ID | None = None
    ttl_seconds: int = strawberry.field(
        default=holds.DEFAULT_TTL_SECONDS,
        description=f"Until the hold expires by itself; at most {holds.MAX_TTL_SECONDS}.",
    )
    idempotency_key: str | None = None


@strawberry.input
class SettleHoldInput:
    hold_id: strawberry.ID
    amount: int = strawberry.field(description="The actual cost: 0 to the amount held.")
    reason: str | None = None
    idempotency_key: str | None = None


@strawberry.input
class ReleaseHoldInput:
    hold_id: strawberry.ID
    idempotency_key: str | None = None


ReserveCreditsResult = Annotated[
    CreditHold | InsufficientCredits | UserNotFound | InvalidInputError | IdempotencyConflict,
    strawberry.union("ReserveCreditsResult"),
]
ReleaseHoldResult = Annotated[
    CreditHold | HoldNotFound | HoldNotActive | InvalidInputError | IdempotencyConflict,
    strawberry.union("ReleaseHoldResult"),
]


@strawberry.type
class HoldMutation:
    @strawberry.mutation(
        permission_classes=[SPEND],
        description="Hold credits for a call whose cost is known only after it; settle or "
        "release it, or it expires by itself. Same idempotencyKey, same hold.",
    )
    async def reserve_credits(self, info: Info, input: ReserveCreditsInput) -> ReserveCreditsResult:
        return await written_once(info, lambda ctx: run_reserve_credits(ctx, input))

    @strawberry.mutation(
        permission_classes=[SPEND],
        description="Spend the actual cost of an active hold; the rest goes back.",
    )
    async def settle_hold(self, info: Info, input: SettleHoldInput) -> CreditChangeResult:
        return await written_once(info, lambda ctx: run_settle_hold(ctx, input))

    @strawberry.mutation(
        permission_classes=[SPEND],
        description="Give an active hold's credits back, all of them.",
    )
    async def release_hold(self, info: Info, input: ReleaseHoldInput) -> ReleaseHoldResult:
        return await written_once(info, lambda ctx: run_release_hold(ctx, input))


# The writes of the hold mutations, shared with the compiled executor (gateway.compiled.writes).


async def run_reserve_credits(ctx: Context, input: ReserveCreditsInput) -> ReserveCreditsResult:
    now = ctx.clock()
    result = await write_for(
        ctx.db,
        user_ref(input.email, input.user_id),
        lambda session, user: holds.reserve_credits(
            session,
            user=user,
            amount=input.amount,
            reason=input.reason,
            actor=ctx.spend_actor(),
            now=now,
            catalog=ctx.catalog,
            ttl_seconds=input.ttl_seconds,
            idempotency_key=input.idempotency_key,
        ),
    )
    return answer(result, CreditHold.of)


async def run_settle_hold(ctx: Context, input: SettleHoldInput) -> CreditChangeResult:
    now = ctx.clock()
    result = await ctx.db.write(
        lambda session: holds.settle_hold(
            session,
            hold_id=str(input.hold_id),
            amount=input.amount,
            reason=input.reason,
            actor=ctx.spend_actor(),
            now=now,
            idempotency_key=input.idempotency_key,
        )
    )
    return answer(result, CreditChange.of)


async def run_release_hold(ctx: Context, input: ReleaseHoldInput) -> ReleaseHoldResult:
    now = ctx.clock()
    result = await ctx.db.write(
        lambda session: holds.release_hold(
            session,
            hold_id=str(input.hold_id),
            actor=ctx.spend_actor(),
            now=now,
            idempotency_key=input.idempotency_key,
        )
    )
    return answer(result, CreditHold.of)
