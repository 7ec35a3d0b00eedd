"""The gateway's vocabularies: roles, statuses and ledger kinds, as StrEnums.

Members are str, so the database columns, JSON and GraphQL keep the very values they had.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """Who calls: an end user (viewer) or the role of an API key."""

    VIEWER = "viewer"
    SERVICE = "service"
    SUPPORT = "support"
    DASHBOARD = "dashboard"
    ADMIN = "admin"


# The roles an API key can have (an end user is a viewer through a JWT, never a key).
KEY_ROLES = tuple(role.value for role in Role if role is not Role.VIEWER)


class StripeEventStatus(StrEnum):
    """A stored Stripe event's state; `received` is never committed (the outcome replaces it)."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class PaymentStatus(StrEnum):
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    FAILED = "failed"
    PENDING = "pending"
    CANCELED = "canceled"


class LedgerKind(StrEnum):
    """What a ledger event did to the balance."""

    GRANT = "grant"
    CONSUME = "consume"
    EXPIRE = "expire"
    REVOKE = "revoke"
    HOLD = "hold"
    SETTLE = "settle"
    RELEASE = "release"


class SubscriptionStatus(StrEnum):
    """Stripe's subscription statuses, in lifecycle order: on a same-second tie the later wins."""

    INCOMPLETE = "incomplete"
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    UNPAID = "unpaid"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    CANCELED = "canceled"


_PAYING = frozenset(
    {SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE}
)


def is_paying(status: str | None) -> bool:
    """A subscription in this status is billed by Stripe: its price decides the tier, and its
    invoices, not the calendar, grant the monthly allowance."""
    return status in _PAYING
