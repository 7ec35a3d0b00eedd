"""Types of what the gateway tells about itself: pricing cards, CRO events, metrics, diagnoses.

Made from the resolvers' frozen dataclasses (schema/mirrors.py): their values are returned as
they are and Strawberry reads their attributes.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from resolvers import models
from resolvers.catalog import pricing
from resolvers.insights import analytics, checks, diagnose, metrics
from schema.mirrors import mirror

CtaKind = strawberry.enum(pricing.CtaKind, name="CtaKind")
Severity = strawberry.enum(checks.Severity, name="Severity")

Cta = mirror(pricing.Cta, description="A call to action, computed for the caller's entitlements.")
TierEntitlement = mirror(
    pricing.EntitlementLine,
    name="TierEntitlement",
    description="One entitlement of a tier, as its card shows it.",
    descriptions={
        "text": "Localized, e.g. '100 PDF-exports per maand'.",
        "per": "'month' when usage resets monthly.",
    },
)
TierCard = mirror(
    pricing.TierCard,
    descriptions={
        "price": "Formatted for the locale, e.g. '€ 19,00'.",
        "amount": "Minor units (cents).",
    },
)
CreditPackCard = mirror(pricing.CreditPackCard)
Pricing = mirror(
    pricing.Pricing, description="The pricing page and the credit-packs page, localized."
)
PremiumOverlay = mirror(
    analytics.PremiumOverlay,
    description="Whether the frontend should show the premium overlay.",
    properties={"should_show": bool},
)

TierCount = mirror(metrics.TierCount)
CurrencyAmount = mirror(metrics.CurrencyAmount)
UserMetrics = mirror(metrics.UserMetrics)
PaymentMetrics = mirror(metrics.PaymentMetrics)
CreditMetrics = mirror(metrics.CreditMetrics)
EntitlementMetrics = mirror(
    metrics.EntitlementMetrics,
    description="collect_entitlement_metrics over the last `days` days.",
)

Finding = mirror(checks.Finding)
AccountSummary = mirror(diagnose.UserSummary, name="AccountSummary", types={"id": strawberry.ID})
Diagnosis = mirror(
    diagnose.Diagnosis,
    description="The runbook's checks for one account, with escalation paths.",
    properties={"is_healthy": bool},
)


@strawberry.type
class AnalyticsEvent:
    id: strawberry.ID
    name: str
    session_id: str | None
    user_id: strawberry.ID | None
    properties: JSON
    request_id: str | None
    occurred_at: datetime

    @classmethod
    def from_row(cls, row: models.AnalyticsEvent) -> AnalyticsEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            session_id=row.session_id,
            user_id=None if row.user_id is None else strawberry.ID(str(row.user_id)),
            properties=row.properties,
            request_id=row.request_id,
            occurred_at=row.occurred_at,
        )


@strawberry.type
class TrackedEvent:
    event: AnalyticsEvent
    recorded: bool = strawberry.field(
        description="False for a once-per-session event already recorded: nothing was written."
    )

    @classmethod
    def of(cls, tracked: analytics.EventTracked) -> TrackedEvent:
        return cls(event=AnalyticsEvent.from_row(tracked.event), recorded=tracked.recorded)
