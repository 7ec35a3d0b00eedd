"""Entitlement changes: tier changes, and the union of everything written under one request."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry import Info, Private

from resolvers import models
from schema.credits import CreditEvent
from schema.entitlements import EntitlementOverride

if TYPE_CHECKING:
    from schema.users import User


@strawberry.type(description="One change of a user's tier.")
class TierChange:
    id: strawberry.ID
    from_tier: str
    to_tier: str
    reason: str
    source: str
    actor: str
    request_id: str | None
    created_at: datetime
    user_id: Private[int]

    @strawberry.field
    async def user(self, info: Info) -> Annotated[User, strawberry.lazy("schema.users")]:
        from schema.users import User

        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.TierChange) -> TierChange:
        return cls(
            id=strawberry.ID(str(row.id)),
            from_tier=row.from_tier,
            to_tier=row.to_tier,
            reason=row.reason,
            source=row.source,
            actor=row.actor,
            request_id=row.request_id,
            created_at=row.created_at,
            user_id=row.user_id,
        )


EntitlementChange = Annotated[
    CreditEvent | TierChange | EntitlementOverride, strawberry.union("EntitlementChange")
]


def entitlement_change(row: Any) -> EntitlementChange:
    """A ledger event, an override or a tier change row as its member of the union."""
    if isinstance(row, models.CreditEvent):
        return CreditEvent.from_row(row)
    if isinstance(row, models.EntitlementOverride):
        return EntitlementOverride.from_row(row)
    return TierChange.from_row(row)
