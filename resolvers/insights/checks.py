"""The runbook's checks as data: what each finding means for support, and who takes over.

Escalation paths are worded as in the runbook's quick-reference table, section 4 (Stripe
reconciliation) and section 5 (escalation criteria).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Check:
    code: str
    severity: Severity
    escalation: str | None  # who takes over when the remediation does not fix it
    remediation: str


_BILLING_RETRIES = "Billing engineering after 2 failed retries"
_REPLAY = "Replay the customer's latest subscription webhook (runbook section 4)."
_LEDGER = "Do not adjust by hand; attach the ledger (entitlements user show --json) to the ticket."
# The runbook's tables as data: what each check means for support, in the runbook's words.
CHECKS = (
    Check("user_not_found", Severity.ERROR, None, "Ask for the login email (runbook section 1)."),
    Check("unknown_tier", Severity.ERROR, _BILLING_RETRIES, "Reset the tier (adjust --set-tier)."),
    Check("tier_mismatch", Severity.ERROR, _BILLING_RETRIES, _REPLAY),
    Check(
        "unknown_subscription_price",
        Severity.ERROR,
        _BILLING_RETRIES,
        "Add the Stripe price to the catalog, or move the subscription to a catalog price.",
    ),
    Check(
        "missing_stripe_customer",
        Severity.WARNING,
        _BILLING_RETRIES,
        "Find the customer in Stripe by email and replay their subscription webhook; if there"
        " is none, the tier was set by hand: confirm it was meant as a gift.",
    ),
    Check(
        "payment_without_grant",
        Severity.ERROR,
        "Backend engineering if grant event is absent",
        "Replay the payment's webhook event and watch for grant_ai_credits (runbook section 4).",
    ),
    Check(
        "payment_without_entitlement_change",
        Severity.ERROR,
        "Billing engineering",
        "Replay the payment's webhook event; escalate if no entitlement_change appears.",
    ),
    Check(
        "refund_credits_unrecovered",
        Severity.WARNING,
        "Billing engineering",
        "The customer spent the credits before the refund; decide with billing what to do.",
    ),
    Check("negative_balance", Severity.ERROR, "Data platform team", _LEDGER),
    Check("balance_mismatch", Severity.ERROR, "Data platform team", _LEDGER),
    Check(
        "webhook_failed",
        Severity.WARNING,
        _BILLING_RETRIES,
        "Replay the event (entitlements webhooks replay) and look for"
        ' "action":"subscription_updated" in the logs.',
    ),
    Check(
        "webhook_failing_repeatedly",
        Severity.ERROR,
        "Billing engineering rotation",
        "The event failed twice (runbook section 4): escalate with its last_error.",
    ),
    Check(
        "repeated_signature_failures",
        Severity.ERROR,
        "Stripe support",
        "Check STRIPE_WEBHOOK_SECRET against the endpoint's signing secret (a rotation lists"
        " both); if they match, open a Stripe support ticket.",
    ),
    Check(
        "missing_correlation_id",
        Severity.WARNING,
        "notify DevOps",
        "These changes cannot be traced in the logs; the actor on each ledger event says who.",
    ),
)
_CHECKS = {check.code: check for check in CHECKS}


@dataclass(frozen=True)
class Finding:
    code: str  # a Check's code
    severity: Severity
    summary: str
    evidence: dict[str, Any]  # JSON-ready: ids, amounts, ISO times
    escalation: str | None
    remediation: str


def finding(
    code: str, summary: str, evidence: dict[str, Any], severity: Severity | None = None
) -> Finding:
    check = _CHECKS[code]
    return Finding(
        code=code,
        severity=severity or check.severity,
        summary=summary,
        evidence=evidence,
        escalation=check.escalation,
        remediation=check.remediation,
    )
