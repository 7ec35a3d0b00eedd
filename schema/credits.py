"""GraphQL types of credits: a user's balance, its grants, and the ledger's events."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry import Info, Private

from resolvers import models
from resolvers.ledger import allowances, history, reading

if TYPE_CHECKING:
    from schema.holds import CreditHold
    from schema.users import User


def row_id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


@strawberry.type
class CreditGrant:
    id: strawberry.ID
    amount: int
    remaining: int
    expires_at: datetime | None
    source: str
    is_purchased: bool
    reason: str
    payment_id: strawberry.ID | None
    created_at: datetime

    @classmethod
    def of(cls, grant: Any | allowances.PendingAllowance) -> CreditGrant:
        """A grant row, or a due allowance shown as the grant it will be."""
        if isinstance(grant, allowances.PendingAllowance):
            return cls(
                id=strawberry.ID(f"pending-allowance-{grant.period_start:%Y-%m}"),
                amount=grant.amount,
                remaining=grant.amount,
                expires_at=grant.expires_at,
                source="plan_allowance",
                is_purchased=False,
                reason=grant.reason,
                payment_id=None,
                created_at=grant.period_start,
            )
        return cls.from_row(grant)

    @classmethod
    def from_row(cls, row: models.CreditGrant) -> CreditGrant:
        return cls(
            id=strawberry.ID(str(row.id)),
            amount=row.amount,
            remaining=row.remaining,
            expires_at=row.expires_at,
            source=row.source,
            is_purchased=row.is_purchased,
            reason=row.reason,
            payment_id=row_id(row.payment_id),
            created_at=row.created_at,
        )


@strawberry.type(description="One entry of the append-only credit ledger.")
class CreditEvent:
    id: strawberry.ID
    kind: str = strawberry.field(description="grant, consume, expire or revoke.")
    amount: int = strawberry.field(description="Signed: positive adds credits.")
    balance_after: int
    reason: str
    source: str
    actor: str
    request_id: str | None
    created_at: datetime
    grant_id: strawberry.ID | None
    payment_id: strawberry.ID | None
    user_id: Private[int]

    @strawberry.field
    async def user(self, info: Info) -> Annotated[User, strawberry.lazy("schema.users")]:
        from schema.users import User

        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.CreditEvent) -> CreditEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            amount=row.amount,
            balance_after=row.balance_after,
            reason=row.reason,
            source=row.source,
            actor=row.actor,
            request_id=row.request_id,
            created_at=row.created_at,
            grant_id=row_id(row.grant_id),
            payment_id=row_id(row.payment_id),
            user_id=row.user_id,
        )


@strawberry.type
class CreditBalance:
    user: Private[models.User]
    # Set for credits(at:): the balance rebuilt from the ledger as it stood then.
    past: Private[history.BalanceAt | None] = None
    # Set by subscriptions: the ledger position read with the row, boxed ((None,): no event yet).
    position: Private[tuple[int | None] | None] = None

    @strawberry.field(
        description="Spendable credits now: unexpired grants' remaining amounts, with this "
        "month's plan allowance counted once it is due, even before it is written.",
        graphql_type=int,
    )
    def available(self, info: Info) -> int | Awaitable[int]:
        if self.past is not None:
            return self.past.available
        ctx = info.context
        # Synchronous on purpose: an async resolver costs a task per user in a list.
        return reading.available(
            self.user, loaders=ctx.loaders, catalog=ctx.catalog, now=ctx.clock()
        )

    @strawberry.field(
        description="Credits on active holds: out of available, not spent yet.", graphql_type=int
    )
    def held(self, info: Info) -> int | Awaitable[int]:
        if self.past is not None:
            return self.past.held
        return reading.held(self.user, loaders=info.context.loaders, now=info.context.clock())

    @strawberry.field(description="The active holds, soonest expiry first.")
    async def holds(
        self, info: Info
    ) -> list[Annotated[CreditHold, strawberry.lazy("schema.holds")]]:
        from schema.holds import CreditHold

        if self.past is not None:
            return [CreditHold(row=h, as_of=self.past.at) for h in self.past.holds]
        ctx = info.context
        active = await reading.active_holds(self.user.id, loaders=ctx.loaders, now=ctx.clock())
        return [CreditHold(row=h) for h in active]

    @strawberry.field(
        description="The ledger position this balance reflects: the id of the user's newest "
        "ledger event (with credits(at:): the last one written by then); null before the first. "
        "Subscriptions carry it, so a client can tell a fresh balance from a stale one."
    )
    async def as_of(self, info: Info) -> strawberry.ID | None:
        if self.past is not None:
            return row_id(self.past.as_of)
        if self.position is not None:
            return row_id(self.position[0])
        return row_id(await info.context.loaders.ledger_position.load(self.user.id))

    @strawberry.field(
        description="Grants with credits left, soonest expiry first; a due monthly allowance "
        "not written yet is listed with an id starting `pending-`."
    )
    async def grants(self, info: Info) -> list[CreditGrant]:
        if self.past is not None:
            return [
                dataclasses.replace(CreditGrant.from_row(g.grant), remaining=g.remaining)
                for g in self.past.grants
            ]
        ctx = info.context
        grants = await reading.open_grants(
            self.user, loaders=ctx.loaders, catalog=ctx.catalog, now=ctx.clock()
        )
        return [CreditGrant.of(g) for g in grants]

    @strawberry.field
    async def next_expiry(self, info: Info) -> datetime | None:
        if self.past is not None:
            return self.past.next_expiry
        ctx = info.context
        return await reading.next_expiry(
            self.user, loaders=ctx.loaders, catalog=ctx.catalog, now=ctx.clock()
        )
