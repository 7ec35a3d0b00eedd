"""The GraphQL type of a payment: what Stripe took, what it granted, what a refund took back."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry import Info, Private

from resolvers import models
from schema.credits import CreditEvent, CreditGrant

if TYPE_CHECKING:
    from schema.users import User


@strawberry.type
class Payment:
    id: strawberry.ID
    kind: str = strawberry.field(description="credit_pack or subscription.")
    amount: int = strawberry.field(description="Minor units (cents).")
    currency: str
    status: str
    amount_refunded: int
    credits_granted: int
    credits_revoked: int
    credits_unrecovered: int = strawberry.field(
        description="Credits a refund should have taken back but that were already spent."
    )
    pack_code: str | None
    tier_code: str | None
    stripe_object_id: str
    stripe_payment_intent_id: str | None
    stripe_charge_id: str | None
    stripe_invoice_id: str | None
    created_at: datetime
    user_id: Private[int]

    @strawberry.field(description="The grants this payment paid for, with what is left of them.")
    async def grants(self, info: Info) -> list[CreditGrant]:
        rows = await info.context.loaders.payment_grants.load(int(self.id))
        return [CreditGrant.from_row(r) for r in rows]

    @strawberry.field(description="The ledger events this payment caused (grants, take-backs).")
    async def credit_events(self, info: Info) -> list[CreditEvent]:
        rows = await info.context.loaders.payment_events.load(int(self.id))
        return [CreditEvent.from_row(r) for r in rows]

    @strawberry.field
    async def user(self, info: Info) -> Annotated[User, strawberry.lazy("schema.users")]:
        from schema.users import User

        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.Payment) -> Payment:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            amount=row.amount,
            currency=row.currency,
            status=row.status,
            amount_refunded=row.amount_refunded,
            credits_granted=row.credits_granted,
            credits_revoked=row.credits_revoked,
            credits_unrecovered=row.credits_unrecovered,
            pack_code=row.pack_code,
            tier_code=row.tier_code,
            stripe_object_id=row.stripe_object_id,
            stripe_payment_intent_id=row.stripe_payment_intent_id,
            stripe_charge_id=row.stripe_charge_id,
            stripe_invoice_id=row.stripe_invoice_id,
            created_at=row.created_at,
            user_id=row.user_id,
        )
