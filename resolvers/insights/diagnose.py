"""`diagnose`: the support runbook's checks run on one customer, as a report of findings.

Read-only. What each check means and who it escalates to is in resolvers/insights/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.billing.events import count_signature_failures
from resolvers.catalog.model import Catalog, Tier
from resolvers.insights.checks import CHECKS, Finding, Severity, finding
from resolvers.insights.metrics import UNPAID_STATUSES
from resolvers.kinds import StripeEventStatus, SubscriptionStatus, is_paying
from resolvers.models import (
    CreditEvent,
    CreditGrant,
    Payment,
    StripeEvent,
    TierChange,
    User,
)
from resolvers.users import normalize_email

# Stripe subscription states in which the subscription's price decides the tier.
ENDED_SUBSCRIPTION = (
    SubscriptionStatus.CANCELED,
    SubscriptionStatus.UNPAID,
    SubscriptionStatus.INCOMPLETE_EXPIRED,
)
SIGNATURE_FAILURE_WINDOW = timedelta(hours=24)
SIGNATURE_FAILURE_THRESHOLD = 3
# A finding's evidence lists at most this many rows; its count says how many there were.
EVIDENCE_ROWS = 10
PAYMENTS_CHECKED = 500


@dataclass(frozen=True)
class UserSummary:
    id: int
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


# The summary's fields that are user columns are copied from the row; the sums are computed.
_USER_FIELDS = [f.name for f in fields(UserSummary) if f.name in User.__table__.columns]


@dataclass(frozen=True)
class Diagnosis:
    email: str
    user: UserSummary | None  # None: no user with that email
    findings: tuple[Finding, ...]
    checks: tuple[str, ...]  # what was checked, so that "no findings" says something
    checked_at: datetime

    @property
    def is_healthy(self) -> bool:
        return not self.findings


async def diagnose(
    session: AsyncSession,
    *,
    email: str,
    catalog: Catalog,
    now: datetime,
) -> Diagnosis:
    """Run every check on the customer with this email, on the Stripe state stored from webhooks."""
    email = normalize_email(email)
    user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
    summary = None
    findings = []
    if user is None:
        findings.append(finding("user_not_found", f"No user with email {email}", {"email": email}))
    else:
        summary = await _summarize(session, user, now)
        findings += _tier_findings(user, catalog)
        findings += _balance_findings(summary, user, now)
        findings += await _payment_findings(session, user)
        findings += await _webhook_findings(session, user)
        findings += await _correlation_findings(session, user)
    findings += await _signature_findings(session, now)
    return Diagnosis(
        email=email,
        user=summary,
        findings=tuple(findings),
        checks=tuple(check.code for check in CHECKS),
        checked_at=now,
    )


async def _summarize(session: AsyncSession, user: User, now: datetime) -> UserSummary:
    def total(column: Any, *where: Any) -> Any:
        return select(func.coalesce(func.sum(column), 0)).where(*where).scalar_subquery()

    ledger, remaining, unexpired = (
        await session.execute(
            select(
                total(CreditEvent.amount, CreditEvent.user_id == user.id),
                total(CreditGrant.remaining, CreditGrant.user_id == user.id),
                total(
                    CreditGrant.remaining,
                    CreditGrant.user_id == user.id,
                    or_(CreditGrant.expires_at.is_(None), CreditGrant.expires_at > now),
                ),
            )
        )
    ).one()
    copied = {name: getattr(user, name) for name in _USER_FIELDS}
    return UserSummary(
        **copied,
        ledger_sum=int(ledger),
        grants_remaining=int(remaining),
        unexpired_remaining=int(unexpired),
    )


def _tier_findings(user: User, catalog: Catalog) -> list[Finding]:
    tier = catalog.tier(user.tier)
    if tier is None:
        evidence = {"tier": user.tier, "catalog_tiers": list(catalog.tier_codes)}
        return [finding("unknown_tier", f"Tier {user.tier!r} is not in the catalog", evidence)]
    findings = []
    if tier.is_paid and not user.stripe_customer_id:
        findings.append(
            finding(
                "missing_stripe_customer",
                f"Paying tier {tier.code} but no Stripe customer is linked",
                {"tier": tier.code, "stripe_customer_id": None},
            )
        )
    status = user.subscription_status
    price_ids = [user.subscription_price_id] if user.subscription_price_id else []
    evidence = {"source": "stored", "status": status, "price_ids": price_ids, "tier": user.tier}
    if is_paying(status):
        priced = [catalog.tier_for_price(price_id) for price_id in price_ids]
        if None in priced or not priced:
            summary = "The active subscription's price is not in the catalog"
            findings.append(finding("unknown_subscription_price", summary, evidence))
        expected = max((t for t in priced if t is not None), key=lambda t: t.rank, default=None)
        if expected is not None and expected.code != tier.code:
            findings.append(_tier_mismatch(tier, expected, evidence))
    elif status in ENDED_SUBSCRIPTION and tier.is_paid:
        # Support may have kept the tier on purpose after a cancellation: worth a look, no more.
        findings.append(_tier_mismatch(tier, catalog.default_tier, evidence, Severity.WARNING))
    return findings


def _tier_mismatch(
    tier: Tier, expected: Tier, evidence: dict[str, Any], severity: Severity | None = None
) -> Finding:
    summary = (
        f"Tier is {tier.code} but the {evidence['status']} Stripe subscription means"
        f" {expected.code}"
    )
    return finding("tier_mismatch", summary, {**evidence, "expected_tier": expected.code}, severity)


def _balance_findings(summary: UserSummary, user: User, now: datetime) -> list[Finding]:
    evidence: dict[str, Any] = {
        "credits_available": summary.credits_available,
        "ledger_sum": summary.ledger_sum,
        "grants_remaining": summary.grants_remaining,
        "unexpired_remaining": summary.unexpired_remaining,
        "credits_next_expiry": _iso(user.credits_next_expiry),
    }
    if summary.credits_available < 0 or summary.ledger_sum < 0:
        return [finding("negative_balance", "The credit balance is negative", evidence)]
    # Expired grants are written off lazily, at the user's next change: until then the row
    # rightly still counts them. Only when no expiry is due must it equal the unexpired sum.
    expiry_due = user.credits_next_expiry is not None and user.credits_next_expiry <= now
    available = summary.credits_available
    disagreements = [
        name
        for name, differs in (
            ("ledger_sum", available != summary.ledger_sum),
            ("grants_remaining", available != summary.grants_remaining),
            ("unexpired_remaining", not expiry_due and available != summary.unexpired_remaining),
        )
        if differs
    ]
    if not disagreements:
        return []
    summary_text = "The balance is stuck: it disagrees with " + " and ".join(disagreements)
    return [
        finding("balance_mismatch", summary_text, {**evidence, "disagrees_with": disagreements})
    ]


async def _payment_findings(session: AsyncSession, user: User) -> list[Finding]:
    has_grant = exists().where(CreditGrant.payment_id == Payment.id)
    has_event = exists().where(CreditEvent.payment_id == Payment.id)
    rows = (
        await session.execute(
            select(Payment, has_grant, has_event)
            .where(Payment.user_id == user.id)
            .order_by(Payment.id.desc())
            .limit(PAYMENTS_CHECKED)
        )
    ).all()
    no_grant, no_change, unrecovered = [], [], []
    for payment, granted, logged in rows:
        took_money = payment.status not in UNPAID_STATUSES and payment.amount > 0
        if took_money and not (payment.credits_granted or granted or logged):
            no_grant.append(payment)
        elif took_money and not logged:
            no_change.append(payment)
        if payment.credits_unrecovered > 0:
            unrecovered.append(payment)
    return [
        *_rows_finding(
            "payment_without_grant", no_grant, "Stripe took the money but no credits were granted"
        ),
        *_rows_finding(
            "payment_without_entitlement_change",
            no_change,
            "A successful payment has no entitlement_change in the ledger",
        ),
        *_rows_finding(
            "refund_credits_unrecovered",
            unrecovered,
            "A refund could not take back credits that were already spent",
        ),
    ]


def _rows_finding(
    code: str, rows: list[Payment] | list[StripeEvent], summary: str
) -> list[Finding]:
    """One finding for all the rows that fail a check, with the first few as evidence."""
    if not rows:
        return []
    listed = [_row_evidence(row) for row in rows[:EVIDENCE_ROWS]]
    return [finding(code, f"{summary} ({len(rows)})", {"count": len(rows), "rows": listed})]


def _row_evidence(row: Payment | StripeEvent) -> dict[str, Any]:
    # A Stripe event's payload is Stripe's whole object: too big for a finding.
    values = {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key != "payload"}
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in values.items()}


async def _webhook_findings(session: AsyncSession, user: User) -> list[Finding]:
    if not user.stripe_customer_id:
        return []
    failed = (
        await session.execute(
            select(StripeEvent)
            .where(
                StripeEvent.stripe_customer_id == user.stripe_customer_id,
                StripeEvent.status == StripeEventStatus.FAILED,
            )
            .order_by(StripeEvent.received_at.desc())
        )
    ).scalars()
    once, repeatedly = [], []
    for event in failed:
        (repeatedly if event.attempts >= 2 else once).append(event)
    return [
        *_rows_finding("webhook_failing_repeatedly", repeatedly, "Stripe events failed twice"),
        *_rows_finding("webhook_failed", once, "Stripe events for this customer failed"),
    ]


async def _signature_findings(session: AsyncSession, now: datetime) -> list[Finding]:
    """Not about one customer: bad signatures carry no customer, but block all of them."""
    since = now - SIGNATURE_FAILURE_WINDOW
    count = await count_signature_failures(session, since=since)
    if count < SIGNATURE_FAILURE_THRESHOLD:
        return []
    summary = f"{count} Stripe webhook deliveries failed the signature check in 24 hours"
    return [finding("repeated_signature_failures", summary, {"count": count, "since": _iso(since)})]


async def _correlation_findings(session: AsyncSession, user: User) -> list[Finding]:
    def unlabelled(table: Any) -> Any:
        return (
            select(func.count())
            .where(table.user_id == user.id, table.request_id.is_(None))
            .scalar_subquery()
        )

    ledger, tiers = (
        await session.execute(select(unlabelled(CreditEvent), unlabelled(TierChange)))
    ).one()
    if not ledger and not tiers:
        return []
    summary = "Changes to this account were recorded without an X-Request-ID"
    evidence = {"credit_events": int(ledger), "tier_changes": int(tiers)}
    return [finding("missing_correlation_id", summary, evidence)]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
