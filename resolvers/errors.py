"""Domain failures: expected outcomes returned as values, each with a stable code and a message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar


@dataclass(frozen=True)
class Failure:
    """Base of every expected failure. A transaction whose work returns one is rolled back."""

    code: ClassVar[str] = "FAILURE"

    @property
    def message(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class UserNotFound(Failure):
    code: ClassVar[str] = "USER_NOT_FOUND"
    email: str | None = None
    user_id: int | None = None

    @property
    def message(self) -> str:
        who = self.email if self.email is not None else f"id {self.user_id}"
        return f"No user with {'email ' if self.email is not None else ''}{who}"


@dataclass(frozen=True)
class InsufficientCredits(Failure):
    code: ClassVar[str] = "INSUFFICIENT_CREDITS"
    available: int
    requested: int

    @property
    def message(self) -> str:
        return f"Only {self.available} credits available, {self.requested} requested"


@dataclass(frozen=True)
class UnknownTier(Failure):
    code: ClassVar[str] = "UNKNOWN_TIER"
    tier: str
    known: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"Unknown tier {self.tier!r}; known tiers: {', '.join(self.known)}"


@dataclass(frozen=True)
class InvalidInput(Failure):
    code: ClassVar[str] = "INVALID_INPUT"
    field: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class IdempotencyConflict(Failure):
    code: ClassVar[str] = "IDEMPOTENCY_CONFLICT"
    idempotency_key: str

    @property
    def message(self) -> str:
        return f"Idempotency key {self.idempotency_key!r} was already used with other arguments"


@dataclass(frozen=True)
class PaymentsNotConfigured(Failure):
    code: ClassVar[str] = "PAYMENTS_NOT_CONFIGURED"

    @property
    def message(self) -> str:
        return "Payments are not configured on this gateway (STRIPE_API_KEY is unset)"


@dataclass(frozen=True)
class PaymentProviderError(Failure):
    """Stripe refused or could not be reached; `provider_message` is Stripe's own words."""

    code: ClassVar[str] = "PAYMENT_PROVIDER_ERROR"
    provider_message: str

    @property
    def message(self) -> str:
        return self.provider_message


@dataclass(frozen=True)
class NoStripeCustomer(Failure):
    code: ClassVar[str] = "NO_STRIPE_CUSTOMER"
    user_id: int

    @property
    def message(self) -> str:
        return f"User {self.user_id} has no Stripe customer yet: nothing to manage in the portal"


@dataclass(frozen=True)
class PaymentNotFound(Failure):
    code: ClassVar[str] = "PAYMENT_NOT_FOUND"
    ref: str

    @property
    def message(self) -> str:
        return f"No payment {self.ref!r} (a payment id or a Stripe cs_/in_/pi_/ch_ id)"


@dataclass(frozen=True)
class StripeEventNotFound(Failure):
    code: ClassVar[str] = "STRIPE_EVENT_NOT_FOUND"
    event_id: str

    @property
    def message(self) -> str:
        return f"No stored Stripe event {self.event_id!r}"


@dataclass(frozen=True)
class StripeEventFailed(Failure):
    """A verified Stripe event whose effects could not be applied; it stays replayable."""

    code: ClassVar[str] = "STRIPE_EVENT_FAILED"
    event_id: str
    reason: str

    @property
    def message(self) -> str:
        return f"Stripe event {self.event_id} failed: {self.reason}"


@dataclass(frozen=True)
class DeliveryNotFound(Failure):
    code: ClassVar[str] = "DELIVERY_NOT_FOUND"
    delivery_id: str

    @property
    def message(self) -> str:
        return f"No outgoing delivery with id {self.delivery_id}"


@dataclass(frozen=True)
class HoldNotFound(Failure):
    code: ClassVar[str] = "HOLD_NOT_FOUND"
    hold_id: str

    @property
    def message(self) -> str:
        return f"No credit hold with id {self.hold_id!r}"


@dataclass(frozen=True)
class HoldNotActive(Failure):
    """The hold was settled, released or has expired: its credits are no longer held."""

    code: ClassVar[str] = "HOLD_NOT_ACTIVE"
    hold_id: int
    status: str

    @property
    def message(self) -> str:
        return f"Credit hold {self.hold_id} is {self.status}, not active"


@dataclass(frozen=True)
class HoldExpired(Failure):
    code: ClassVar[str] = "HOLD_EXPIRED"
    hold_id: int
    expires_at: datetime

    @property
    def message(self) -> str:
        return f"Credit hold {self.hold_id} expired at {self.expires_at.isoformat()}"


@dataclass(frozen=True)
class UnknownFeature(Failure):
    code: ClassVar[str] = "UNKNOWN_FEATURE"
    feature: str
    known: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"Unknown feature {self.feature!r}; known features: {', '.join(self.known)}"


@dataclass(frozen=True)
class NoAccess(Failure):
    code: ClassVar[str] = "NO_ACCESS"
    feature: str

    @property
    def message(self) -> str:
        return f"The user's plan does not include {self.feature}"


@dataclass(frozen=True)
class LimitExceeded(Failure):
    code: ClassVar[str] = "LIMIT_EXCEEDED"
    feature: str
    limit: int
    usage: int
    requested: int

    @property
    def message(self) -> str:
        left = max(self.limit - self.usage, 0)
        return (
            f"{self.feature}: {self.usage} of {self.limit} used, {left} left,"
            f" {self.requested} requested"
        )
