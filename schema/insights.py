"""Types of what the gateway tells about itself: pricing cards, CRO events, metrics, diagnoses.

Each mirrors a frozen dataclass of the resolvers field for field, so resolvers' values are
returned as they are and Strawberry reads their attributes.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from resolvers.catalog import pricing
from resolvers.insights import diagnose

CtaKind = strawberry.enum(pricing.CtaKind, name="CtaKind")
Severity = strawberry.enum(diagnose.Severity, name="Severity")


@strawberry.type(description="A call to action, computed for the caller's entitlements.")
class Cta:
    kind: CtaKind
    label: str
    url: str | None


@strawberry.type(description="One entitlement of a tier, as its card shows it.")
class TierEntitlement:
    feature: str
    text: str = strawberry.field(description="Localized, e.g. '100 PDF-exports per maand'.")
    limit: int | None
    per: str | None = strawberry.field(description="'month' when usage resets monthly.")


@strawberry.type
class TierCard:
    code: str
    rank: int
    name: str
    price: str = strawberry.field(description="Formatted for the locale, e.g. '€ 19,00'.")
    amount: int = strawberry.field(description="Minor units (cents).")
    currency: str
    per_month: str
    monthly_credits: int
    allowance: str
    features: list[str]
    entitlements: list[TierEntitlement]
    trial_days: int
    is_current: bool
    cta: Cta
    upgrade_url: str | None
    manage_url: str | None


@strawberry.type
class CreditPackCard:
    code: str
    name: str
    credits: int
    price: str
    amount: int
    currency: str
    cta: Cta
    buy_credits_url: str | None


@strawberry.type(description="The pricing page and the credit-packs page, localized.")
class Pricing:
    locale: str
    currency: str
    tiers: list[TierCard]
    credit_packs: list[CreditPackCard]
    sidebar_cta: Cta


@strawberry.type
class AnalyticsEvent:
    id: strawberry.ID
    name: str
    session_id: str | None
    user_id: strawberry.ID | None
    properties: JSON
    request_id: str | None
    occurred_at: datetime


@strawberry.type
class TrackedEvent:
    event: AnalyticsEvent
    recorded: bool = strawberry.field(
        description="False for a once-per-session event already recorded: nothing was written."
    )


@strawberry.type(description="Whether the frontend should show the premium overlay.")
class PremiumOverlay:
    eligible: bool
    shown: bool
    should_show: bool


@strawberry.type
class TierCount:
    tier: str
    count: int


@strawberry.type
class CurrencyAmount:
    currency: str
    amount: int


@strawberry.type
class UserMetrics:
    total: int
    plans: list[TierCount]
    trials_expiring: int


@strawberry.type
class PaymentMetrics:
    count: int
    gross_by_currency: list[CurrencyAmount]
    refunds: int
    refunded_by_currency: list[CurrencyAmount]
    disputes: int
    credit_packs: int
    subscriptions: int


@strawberry.type
class CreditMetrics:
    granted: int
    consumed: int
    expired: int
    revoked: int


@strawberry.type(description="collect_entitlement_metrics over the last `days` days.")
class EntitlementMetrics:
    days: int
    since: datetime
    until: datetime
    users: UserMetrics
    payments: PaymentMetrics
    credits: CreditMetrics


@strawberry.type
class Finding:
    code: str
    severity: Severity
    summary: str
    evidence: JSON
    escalation: str | None
    remediation: str


@strawberry.type
class AccountSummary:
    id: strawberry.ID
    email: str
    tier: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    subscription_status: str | None
    subscription_price_id: str | None
    trial_ends_at: datetime | None
    credits_available: int
    ledger_sum: int
    grants_remaining: int
    unexpired_remaining: int


@strawberry.type(description="The runbook's checks for one account, with escalation paths.")
class Diagnosis:
    email: str
    user: AccountSummary | None
    findings: list[Finding]
    checks: list[str]
    checked_at: datetime
    is_healthy: bool
