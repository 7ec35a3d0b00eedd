"""Typed error values of the mutation result unions, mirrored from the domain failures."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from resolvers import errors as domain


@strawberry.interface(description="An expected failure of a mutation, returned as a value.")
class Error:
    message: str
    code: str


@strawberry.type
class UserNotFound(Error):
    email: str | None
    user_id: strawberry.ID | None


@strawberry.type
class InsufficientCredits(Error):
    available: int
    requested: int


@strawberry.type
class UnknownTier(Error):
    tier: str
    known_tiers: list[str]


@strawberry.type
class InvalidInput(Error):
    field: str


@strawberry.type
class IdempotencyConflict(Error):
    idempotency_key: str


@strawberry.enum
class HoldStatus(Enum):
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


@strawberry.type
class HoldNotFound(Error):
    hold_id: str


@strawberry.type
class HoldNotActive(Error):
    hold_id: strawberry.ID
    status: HoldStatus


@strawberry.type
class HoldExpired(Error):
    hold_id: strawberry.ID
    expires_at: datetime


@strawberry.type
class PaymentsNotConfigured(Error):
    pass


@strawberry.type
class PaymentProviderError(Error):
    provider_message: str


@strawberry.type
class NoStripeCustomer(Error):
    user_id: strawberry.ID


@strawberry.type
class PaymentNotFound(Error):
    ref: str


@strawberry.type
class WebhookEventNotFound(Error):
    event_id: str


@strawberry.type
class WebhookEventFailed(Error):
    event_id: str
    reason: str


@strawberry.type
class UnknownFeature(Error):
    feature: str
    known_features: list[str]


@strawberry.type
class NoAccess(Error):
    feature: str


@strawberry.type
class LimitExceeded(Error):
    feature: str
    limit: int
    usage: int
    requested: int


def from_failure(failure: domain.Failure) -> Error:
    """The GraphQL value of a domain failure."""
    message, code = failure.message, failure.code
    match failure:
        case domain.UserNotFound(email=email, user_id=user_id):
            uid = strawberry.ID(str(user_id)) if user_id is not None else None
            return UserNotFound(message=message, code=code, email=email, user_id=uid)
        case domain.InsufficientCredits(available=available, requested=requested):
            return InsufficientCredits(
                message=message, code=code, available=available, requested=requested
            )
        case domain.UnknownTier(tier=tier, known=known):
            return UnknownTier(message=message, code=code, tier=tier, known_tiers=list(known))
        case domain.InvalidInput(field=field):
            return InvalidInput(message=message, code=code, field=field)
        case domain.IdempotencyConflict(idempotency_key=key):
            return IdempotencyConflict(message=message, code=code, idempotency_key=key)
        case domain.HoldNotFound(hold_id=hold_id):
            return HoldNotFound(message=message, code=code, hold_id=hold_id)
        case domain.HoldNotActive(hold_id=hold_id, status=status):
            return HoldNotActive(
                message=message,
                code=code,
                hold_id=strawberry.ID(str(hold_id)),
                status=HoldStatus(status),
            )
        case domain.HoldExpired(hold_id=hold_id, expires_at=expires_at):
            return HoldExpired(
                message=message,
                code=code,
                hold_id=strawberry.ID(str(hold_id)),
                expires_at=expires_at,
            )
        case domain.PaymentsNotConfigured():
            return PaymentsNotConfigured(message=message, code=code)
        case domain.PaymentProviderError(provider_message=provider_message):
            return PaymentProviderError(
                message=message, code=code, provider_message=provider_message
            )
        case domain.NoStripeCustomer(user_id=user_id):
            return NoStripeCustomer(message=message, code=code, user_id=strawberry.ID(str(user_id)))
        case domain.PaymentNotFound(ref=ref):
            return PaymentNotFound(message=message, code=code, ref=ref)
        case domain.StripeEventNotFound(event_id=event_id):
            return WebhookEventNotFound(message=message, code=code, event_id=event_id)
        case domain.StripeEventFailed(event_id=event_id, reason=reason):
            return WebhookEventFailed(message=message, code=code, event_id=event_id, reason=reason)
        case domain.UnknownFeature(feature=feature, known=known):
            return UnknownFeature(
                message=message, code=code, feature=feature, known_features=list(known)
            )
        case domain.NoAccess(feature=feature):
            return NoAccess(message=message, code=code, feature=feature)
        case domain.LimitExceeded(feature=feature, limit=limit, usage=usage, requested=requested):
            return LimitExceeded(
                message=message,
                code=code,
                feature=feature,
                limit=limit,
                usage=usage,
                requested=requested,
            )
    raise TypeError(f"no GraphQL error type for {type(failure).__name__}")
