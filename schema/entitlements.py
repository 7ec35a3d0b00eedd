"""GraphQL types of entitlements: what a user may use, and support's overrides of the plan."""

from __future__ import annotations

from datetime import datetime

import strawberry

from resolvers import models
from resolvers.entitlements import access as entitlements

EntitlementSource = strawberry.enum(
    entitlements.Source,
    name="EntitlementSource",
    description="Where an entitlement comes from: the tier's plan, a support override, or "
    "neither (no access).",
)


@strawberry.type(description="A user's entitlement to one feature of the catalog, now.")
class Entitlement:
    feature: str
    has_access: bool
    limit: int | None = strawberry.field(description="Null: no limit (or no access).")
    usage: int = strawberry.field(description="Used in the current period (metered) or in all.")
    remaining: int | None = strawberry.field(
        description="What may still be used; null when there is no limit, 0 without access."
    )
    resets_at: datetime | None = strawberry.field(
        description="Metered features: when usage starts again at 0."
    )
    source: entitlements.Source  # shown as EntitlementSource, registered above

    @classmethod
    def of(cls, value: entitlements.Entitlement) -> Entitlement:
        return cls(
            feature=value.feature,
            has_access=value.has_access,
            limit=value.limit,
            usage=value.usage,
            remaining=value.remaining,
            resets_at=value.resets_at,
            source=value.source,
        )


@strawberry.type(description="One override of a plan's entitlement, set by support.")
class EntitlementOverride:
    id: strawberry.ID
    feature: str
    has_access: bool
    limit: int | None = strawberry.field(description="Null: no limit.")
    expires_at: datetime | None
    reason: str
    source: str
    actor: str
    request_id: str | None
    created_at: datetime
    user_id: strawberry.ID

    @classmethod
    def from_row(cls, row: models.EntitlementOverride) -> EntitlementOverride:
        return cls(
            id=strawberry.ID(str(row.id)),
            feature=row.feature,
            has_access=row.has_access,
            limit=row.usage_limit,
            expires_at=row.expires_at,
            reason=row.reason,
            source=row.source,
            actor=row.actor,
            request_id=row.request_id,
            created_at=row.created_at,
            user_id=strawberry.ID(str(row.user_id)),
        )
